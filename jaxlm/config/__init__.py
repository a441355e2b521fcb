"""One config system for the whole project: frozen dataclasses, YAML files, dotted overrides."""

from jaxlm.config.loader import from_dict, load_yaml, parse_overrides, to_dict
from jaxlm.config.run import RunConfig, check_sample_fits, load_run_config

__all__ = ["RunConfig", "check_sample_fits", "from_dict", "load_run_config", "load_yaml", "parse_overrides",
           "to_dict"]
