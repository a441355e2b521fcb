"""`jaxlm tokenizer train FILES... --vocab-size N --output DIR`: a sentencepiece BPE with byte fallback."""

from __future__ import annotations

from pathlib import Path

from jaxlm.cli.common import positive_int
from jaxlm.outputs import check_output


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a sentencepiece BPE model (byte fallback, LLaMA-2 settings)")
    t.add_argument("inputs", nargs="+", metavar="PATH",
                   help="text files or folders of *.txt (bundled:corpus/train is the shipped corpus)")
    t.add_argument("--vocab-size", type=positive_int, required=True,
                   help="number of pieces, specials and bytes included")
    t.add_argument("--output", required=True, help="directory to write tokenizer.model into")
    t.add_argument("--overwrite", action="store_true", help="replace an existing DIR/tokenizer.model")
    t.add_argument("--character-coverage", type=float, default=0.99995,
                   help="fraction of characters given their own piece; the rest use byte fallback")
    t.set_defaults(func=run_train)


def run_train(args) -> int:
    # lazy: keeps `jaxlm --help` fast (sentencepiece loads only to train)
    from jaxlm.tokenizer.spm import FILE_NAME
    from jaxlm.tokenizer.train import text_files, train_sentencepiece

    files = text_files(args.inputs)
    check_output(args.output, overwrite=True)  # the folder: not empty (""), not a file, writable
    check_output(Path(args.output) / FILE_NAME, overwrite=args.overwrite, inputs=files, folder=False)  # before training
    tok = train_sentencepiece(files, args.output, args.vocab_size, character_coverage=args.character_coverage)
    print(f"trained on {len(files)} files: {tok.vocab_size} pieces (bos {tok.bos_id}, eos {tok.eos_id}, "
          f"pad {tok.pad_id}) -> {args.output}/tokenizer.model")
    return 0
