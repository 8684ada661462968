"""``alexatm-jax train-tokenizer``: a SentencePiece unigram vocabulary with AlexaTM's special tokens."""

from __future__ import annotations


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
    p.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=8092,
                   help="SentencePiece pieces (seqio adds --extra-ids sentinels on top; default 8092 + 100 = 8192)")
    p.add_argument("--lang", default="xx", help="language label for --files (for per-language balancing)")
    p.add_argument("--alpha", type=float, default=0.5, help="language balancing exponent (p ~ n^alpha)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    import glob

    from alexatm_jax.cli import UserError
    from alexatm_jax.data import bundled, tasks, tokenizer_training, vocab

    if args.corpus == "bundled":
        texts = {lang: [d["text"] for d in bundled.pretrain_documents(lang, "train")] for lang in bundled.LANGS}
    else:
        texts = {args.lang: []}
        for pattern in args.files:
            if not glob.glob(pattern):
                raise UserError(f"no files match {pattern!r}: check the path or glob")
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
