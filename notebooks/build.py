"""Write the notebooks of this folder from the cells below (valid nbformat 4 JSON, no outputs).

    python notebooks/build.py           # (re)write quickstart.ipynb and router_ablation.ipynb
    python notebooks/build.py --check   # exit 1 if a notebook differs from what this writes

Edit the cells here, not the .ipynb files: the JSON then stays reviewable and valid.
tests/test_notebooks.py executes both (nbclient) at the tiny sizes set in their first cells.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# The sizes both notebooks share: a couple of minutes on a 2-core CPU together. Raise STEPS and
# N_DATABASES for a model that gets questions right (configs/quickstart.yaml trains 800 steps).
SIZES = '''STEPS = 150         # configs/quickstart.yaml: 800
N_DATABASES = 40    # databases generated (70% train, 15% validation, 15% test)
EXAMPLES_PER_DB = 4
'''

SETUP = '''import json
import tempfile
from pathlib import Path

import vantage_core  # noqa: F401  (loads the optimized BLAS before MLX)
from vantage_core.resources import configs_dir

WORK = Path(tempfile.mkdtemp(prefix="vantage-notebook-"))
data = {"name": "synthetic", "n_databases": N_DATABASES, "examples_per_db": EXAMPLES_PER_DB}
TINY = [f"train.steps={STEPS}", "train.batch_size=8", f"train.eval_every={STEPS}", f"train.save_every={STEPS}",
        "train.warmup_steps=10", f"data.train={json.dumps([data])}",
        f"data.validation={json.dumps([{**data, 'limit': 12}])}", f"data.test={json.dumps([{**data, 'limit': 8}])}",
        "inference.beam_size=2", "inference.max_new_tokens=40"]
print("configs from", configs_dir(), "| work folder", WORK)
'''


def quickstart() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Vantage quickstart, step by step\n\n"
            "What `vantage quickstart` does, one piece at a time: generate SQLite databases, train a tiny "
            "Mixture-of-Experts text-to-SQL model on some of them, look at its loss and at how its router spreads "
            "tokens over the experts, then ask it questions about databases it never saw and run its SQL.\n\n"
            "The sizes below keep the whole notebook under a minute on a laptop CPU; the model is then far from "
            "trained. Raise `STEPS` for real answers."),
        new_code_cell(SIZES),
        new_code_cell(SETUP),
        new_markdown_cell("## The config\n\n`configs/quickstart.yaml` with the tiny sizes as overrides, exactly as "
                          "`vantage quickstart --set ...` would apply them."),
        new_code_cell('from vantage_core.config import load_config\n\n'
                      'cfg = load_config(configs_dir() / "quickstart.yaml", [*TINY, f"run.dir={WORK / \'run\'}"])\n'
                      'print(f"{cfg.model.num_experts} experts, router {cfg.model.router.model_dump()}, "\n'
                      '      f"{cfg.model.n_layers} layers, d_model {cfg.model.d_model}, target {cfg.data.target}")'),
        new_markdown_cell("## Train"),
        new_code_cell('from vantage_core.train.run import train\n\n'
                      'summary = train(cfg, overwrite=True, progress=False)\n'
                      '{k: summary[k] for k in ("steps", "final_loss", "tokens_per_s", "load_balance", "validation")}'),
        new_markdown_cell("## Loss and expert load\n\n`vantage plot RUN_DIR` draws these from the run's "
                          "`metrics.jsonl`: the training loss, and per MoE layer the share of tokens each expert got."),
        new_code_cell('from IPython.display import Image, display\n'
                      'from vantage_core.train.plot import plot_run\n\n'
                      'for png in plot_run(cfg.run.path):\n'
                      '    print(png.name)\n'
                      '    display(Image(filename=str(png)))'),
        new_markdown_cell("## Ask questions about unseen databases\n\nThe test split's databases were not in "
                          "training. `Engine.generate` is what `vantage generate` and `vantage serve` use; "
                          "`run=True` runs the SQL read-only in the sandboxed executor."),
        new_code_cell('from vantage_core.data.pipeline import load_split\n'
                      'from vantage_core.inference.engine import Engine\n\n'
                      'engine = Engine.load(cfg.run.path)\n'
                      'test = load_split(cfg.data, "test").examples\n'
                      'for ex in test[:3]:\n'
                      '    g = engine.generate(ex.question, db_path=ex.db_paths[0], run=True)\n'
                      '    print(f"[{ex.db_id}] {ex.question}\\n  model: {g.sql}\\n  gold:  {ex.sql}")\n'
                      '    print("  rows:", g.rows[:3] if g.rows is not None else g.error)'),
        new_markdown_cell("## Export it\n\n`vantage export` writes `config.json`, `model.safetensors` (MLX), "
                          "`vantage_tokenizer/` and a model card; `vantage generate --checkpoint` loads it."),
        new_code_cell('from vantage_core.inference.export import export_model\n\n'
                      'record = export_model(cfg.run.path, WORK / "export", bits=8, group_size=32)\n'
                      'print(sorted(p.name for p in (WORK / "export").iterdir()), record["quantization"])\n'
                      'print(Engine.load(WORK / "export").generate(test[0].question, db_path=test[0].db_paths[0]).sql)'),
    ]
    return new_notebook(cells=cells, metadata=_metadata())


def router_ablation() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Router ablation: top-2 against Switch (top-1)\n\n"
            "Two runs of the quickstart model that differ only in the router, compared in one table "
            "(`vantage sweep`), then the expert-specialization atlas of each (`vantage analyze experts`): which "
            "experts receive which SQL roles (keywords, tables, columns, values, ...).\n\n"
            "Tiny sizes again, so that CI runs it in about a minute: the figures say how to read the outputs, "
            "not which router wins."),
        new_code_cell(SIZES),
        new_code_cell(SETUP),
        new_markdown_cell("## The sweep file\n\nThe same form as `configs/sweeps/routers.yaml`, with two runs."),
        new_code_cell('import yaml\n\n'
                      'sweep = {"base": str(configs_dir() / "quickstart.yaml"), "name": "routers-tiny", "set": {},\n'
                      '         "runs": [{"name": "topk", "model.router": {"name": "topk", "k": 2}},\n'
                      '                  {"name": "switch", "model.router": {"name": "switch"}}]}\n'
                      'sweep_file = WORK / "routers.yaml"\n'
                      'sweep_file.write_text(yaml.safe_dump(sweep))\n'
                      'print(sweep_file.read_text())'),
        new_markdown_cell("## Train both and compare"),
        new_code_cell('from IPython.display import Image, Markdown, display\n'
                      'from vantage_core.train.sweep import run_sweep\n\n'
                      'result = run_sweep(sweep_file, WORK / "sweep", overrides=TINY, overwrite=True, progress=False,\n'
                      '                   echo=lambda line: None)\n'
                      'display(Markdown(result["markdown"].read_text()))\n'
                      'display(Image(filename=str(result["figure"])))'),
        new_markdown_cell("## The expert-specialization atlas\n\nPer MoE layer, `p(role | expert)` and "
                          "`p(expert | role)` as heatmaps, and the mutual information between expert and role "
                          "against a shuffled-routing baseline."),
        new_code_cell('from vantage_core.analysis.atlas import AtlasOptions, analyze_run, plot_comparison\n\n'
                      'atlases = []\n'
                      'for name in ("topk", "switch"):\n'
                      '    atlas, files = analyze_run(WORK / "sweep" / name, "synthetic", "validation",\n'
                      '                               AtlasOptions(limit=12, n_shuffles=2, progress=False),\n'
                      '                               out_dir=WORK / "atlas" / name, name=name)\n'
                      '    atlases.append(atlas)\n'
                      '    for layer in atlas.layers:\n'
                      '        print(f"{name} layer {layer.layer}: I(expert; role) = {layer.mi:.3f} bits "\n'
                      '              f"(shuffled {layer.mi_shuffled:.3f})")\n'
                      '    heatmaps = sorted(p for p in files.values() if p.name.startswith("heatmap"))\n'
                      '    display(Image(filename=str(heatmaps[0])))'),
        new_code_cell('display(Image(filename=str(plot_comparison(atlases, WORK / "atlas" / "compare.png"))))'),
    ]
    return new_notebook(cells=cells, metadata=_metadata())


def _metadata() -> dict:
    return {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}


NOTEBOOKS = {"quickstart.ipynb": quickstart, "router_ablation.ipynb": router_ablation}


def render(make) -> str:
    nb = make()
    for i, cell in enumerate(nb.cells):  # stable ids: the files do not change from one build to the next
        cell["id"] = f"cell-{i}"
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for name, make in NOTEBOOKS.items():
        text, path = render(make), HERE / name
        if "--check" in argv:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python notebooks/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
