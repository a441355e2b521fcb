"""Device meshes and the logical-axis -> mesh-axis sharding rules."""

from jaxlm.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from jaxlm.parallel.rules import (
                                  RULES,
                                  batch_sharding,
                                  constrain,
                                  current_mesh,
                                  logical_to_spec,
                                  param_shardings,
                                  use_mesh,
)

__all__ = ["MESH_AXES", "RULES", "batch_sharding", "constrain", "current_mesh", "logical_to_spec", "make_mesh",
           "mesh_shape", "param_shardings", "use_mesh"]
