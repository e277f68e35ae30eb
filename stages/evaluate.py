"""Stage eval@<variant>: test-split retrieval, zero-shot AUC, linear probe and bootstrap
intervals from the embeddings of embed@<variant> (prompts included: no model is loaded);
per-model plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.cli import run
from lib.config.loader import load_params
from lib.config.variants import variant_name
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.eval.embedding_files import Embeddings, load_finetune
from lib.eval.evaluate import evaluate, fraction_key
from lib.eval.plots import save_model_plots
from lib.headline import model_headline, write_headline
from lib.io import atomic_path, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True, help="models/<variant> (its name)")
    ap.add_argument("--embeddings", type=Path, required=True, help="output of embed@")
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--pack", type=Path, help="output of pack_images, as given to embed@")
    ap.add_argument("--out", type=Path, required=True, help="per-row results for compare")
    ap.add_argument("--metrics", type=Path, required=True, help="every test metric")
    ap.add_argument("--headline", type=Path, help="DVC metric: the headline (omitted: none)")
    ap.add_argument("--plots", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    p = load_params(args.params).eval
    name = variant_name(args.model)
    emb = Embeddings.load(args.embeddings)
    prompt_emb, neg_emb = emb.prompts(str(args.embeddings))
    splits = read_master(args.master)
    if args.pack:  # the rows embed@ embedded: without the images the pack could not decode
        pack = Pack.open(args.pack)
        splits = {name: pack.usable(split) for name, split in splits.items()}
    ft_scores, ft_meta = load_finetune(args.embeddings)  # empty unless eval.finetune
    result = evaluate(emb, splits, prompt_emb, neg_emb, p, ft_scores, ft_meta)

    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        result.rows.save(tmp)
        (tmp / "details.json").write_text(json.dumps(result.details, indent=2) + "\n")
    write_json(args.metrics, result.metrics)
    full = fraction_key(max(p.probe_fractions))
    if args.headline is not None:
        write_headline(args.headline, model_headline(result.metrics, full, p.recall_ks))

    save_model_plots(args.plots, name, result, splits["test"].labels, full)
    m = result.metrics
    print(
        f"eval@{name}: t2i R@1 {m['t2i_R@1']:.3f} R@10 {m['t2i_R@10']:.3f}, "
        f"zero-shot mean AUC {m['zero_shot_mean_auc']}, probe {full} mean AUC "
        f"{m[f'probe_{full}_mean_auc']} -> {args.metrics}"
    )


if __name__ == "__main__":
    run(main)
