"""``alexatm-jax train-tokenizer``: a SentencePiece unigram vocabulary with AlexaTM's special tokens."""

from __future__ import annotations

import os

from alexatm_jax.commands import arg_types


def register(subparsers):
    p = subparsers.add_parser(
        "train-tokenizer",
        help="train a SentencePiece unigram vocabulary ([PAD]=0 </s>=1 <unk>=2 <s>=3 [MASK] [CLM] [DOC] ...)",
        description="Train a SentencePiece unigram model with AlexaTM's special tokens, UL2 mode tokens and "
                    "reserved [TAG_i] pieces, byte fallback on. The result loads as "
                    "seqio.SentencePieceVocabulary (alexatm_jax.data.vocab.get_vocabulary(path)).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--files", nargs="+", metavar="GLOB",
                     help="text files (.txt: one document per line; .jsonl[.gz]: records with a 'text' field)")
    src.add_argument("--corpus", choices=["bundled"], help="a registered corpus: 'bundled' = the demo corpus")
    p.add_argument("--output", required=True, metavar="PREFIX", type=arg_types.non_empty_string,
                   help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=arg_types.positive_int, default=8092,
                   help="SentencePiece pieces (seqio adds --extra-ids sentinels on top; default 8092 + 100 = 8192)")
    p.add_argument("--lang", default="xx", help="language label for --files (for per-language balancing)")
    p.add_argument("--alpha", type=arg_types.unit_interval, default=0.5,
                   help="language balancing exponent in [0, 1] (p ~ n^alpha)")
    p.add_argument("--seed", type=arg_types.non_negative_int, default=0)
    p.set_defaults(func=run)


def _missing_folders(path: str) -> list[str]:
    """The folders of ``path`` that do not exist yet, innermost first (what creating it will add)."""
    missing, folder = [], os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def run(args) -> int:
    created = _missing_folders(args.output)
    try:
        return _run(args)
    except BaseException:
        for folder in created:  # a failed run leaves no empty output folder behind (only those it made)
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise


def _run(args) -> int:
    import glob

    from alexatm_jax.cli import UserError
    from alexatm_jax.data import bundled, tasks, tokenizer_training, vocab

    tokenizer_training.prepare_output_prefix(args.output)  # before the (slow) reading of the text
    if args.corpus == "bundled":
        texts = {lang: [d["text"] for d in bundled.pretrain_documents(lang, "train")] for lang in bundled.LANGS}
    else:
        texts = {args.lang: []}
        for pattern in args.files:
            matches = glob.glob(pattern)
            if not matches:
                raise UserError(f"no files match {pattern!r}: check the path or glob")
            folders = [m for m in matches if os.path.isdir(m)]
            if folders:
                raise UserError(f"--files {pattern!r} matches the directory {folders[0]}; give the text files in it, "
                                f"e.g. {os.path.join(folders[0], '*.txt')!r}")
            texts[args.lang].extend(tasks.read_text_files(pattern))
    try:
        path = tokenizer_training.train_sentencepiece(texts, args.output, vocab_size=args.vocab_size,
                                                      alpha=args.alpha, seed=args.seed)
    except RuntimeError as error:  # sentencepiece reports a too-small corpus this way
        raise UserError(f"SentencePiece training failed: {error}. With little text, lower --vocab-size") from None
    v = vocab.get_vocabulary(path)
    ids = vocab.special_token_ids(v)
    print(f"wrote {path} ({args.output}.vocab): {v.vocab_size} ids with {v.extra_ids} extra ids; "
          f"[PAD]={ids['pad']} </s>={ids['eos']} <unk>={ids['unk']} <s>={ids['bos']} [MASK]={ids['mask']} "
          f"[CLM]={ids['clm']} [DOC]={ids['doc']}")
    return 0
