"""Write the notebooks from their cells (kept here as text, so diffs stay readable).

    python notebooks/make_notebooks.py     # rewrites notebooks/*.ipynb without outputs
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    new_markdown_cell(
        "# lorasearch quickstart\n\n"
        "A search space, a super-network, a short NLS training run, an NSGA-II search, the Pareto plot and an "
        "export, in one notebook. `MODEL = \"tiny-llama\"` runs in about a minute on a CPU; set it to "
        "`\"default\"` for SmolLM2-135M (a few minutes) or to any Hugging Face model name or path."
    ),
    new_code_cell(
        "from pathlib import Path\n"
        "import tempfile\n\n"
        "MODEL = \"tiny-llama\"\n"
        "SPACE = Path(\"..\") / \"search_spaces\" / (\"smollm2-135m-lonas.yaml\" if MODEL == \"default\" else \"tiny-llama.yaml\")\n"
        "WORK = Path(tempfile.mkdtemp(prefix=\"lorasearch-quickstart-\"))\n"
        "WORK"
    ),
    new_markdown_cell("## 1. The search space and the super-network"),
    new_code_cell(
        "from lorasearch import SuperNetwork\n\n"
        "net = SuperNetwork.from_pretrained(MODEL, SPACE)\n"
        "space = net.space\n"
        "print(net)\n"
        "print(\"configs:\", space.size())\n"
        "print(\"heuristic (index (n-1)//2 of each list):\", space.heuristic())"
    ),
    new_markdown_cell("## 2. NLS training on the synthetic task\n\nThe default sampler (`auto`) trains the sandwich for a Mode B space like this one (the max, the min and two random sub-networks in each optimizer step) and one random sub-network per step for Mode A; the base stays frozen."),
    new_code_cell(
        "from lorasearch.data import synthetic_task, train_val_split\n"
        "from lorasearch.train.targets import encode_records\n"
        "from lorasearch.train import NLSTrainer, TrainArgs\n\n"
        "train, val = train_val_split(synthetic_task(300), 0.2)\n"
        "examples = encode_records(net.tokenizer, train, target=\"text\", max_length=64)\n"
        "trainer = NLSTrainer(net, examples, TrainArgs(steps=30, batch_size=8, lr=3e-3, warmup_steps=3), WORK / \"train\")\n"
        "trainer.prepare()\n"
        "trained = trainer.train(progress=False)\n"
        "trained"
    ),
    new_markdown_cell("## 3. NSGA-II on option-text accuracy and MACs"),
    new_code_cell(
        "from lorasearch import MultipleChoiceEvaluator, SearchSettings, search_network\n\n"
        "evaluator = MultipleChoiceEvaluator(net, val, mode=\"text\", limit=30, progress=False)\n"
        "result = search_network(net, evaluator, objectives=[\"accuracy\", \"macs\"],\n"
        "                        settings=SearchSettings(strategy=\"nsga2\", budget=16, population=8),\n"
        "                        out_dir=WORK / \"search\")\n"
        "result.pareto[[\"eval_id\", \"accuracy\", \"accuracy_stderr\", \"macs\", \"source\"]]"
    ),
    new_markdown_cell("## 4. The Pareto front"),
    new_code_cell(
        "from lorasearch.report import pareto_figure\n\n"
        "figure = pareto_figure(result)\n"
        "figure"
    ),
    new_markdown_cell("## 5. Export the knee subnet"),
    new_code_cell(
        "from lorasearch import export_config, export_peft, export_pruned, pick_config\n\n"
        "row, config = pick_config(result.table, \"knee\", space)\n"
        "export_config(net, config, WORK / \"exports\" / \"config\")\n"
        "exporter = export_pruned if space.mode == \"B\" else export_peft  # narrower Mode B layers: a pruned model\n"
        "folder = exporter(net, config, WORK / \"exports\" / \"model\")\n"
        "sorted(p.name for p in folder.iterdir())"
    ),
]

ANALYSIS = [
    new_markdown_cell(
        "# Opening run directories, comparing strategies, picking a subnet under a MAC budget\n\n"
        "Point `RUNS` at search run directories (`lorasearch search --out DIR`). Left empty, the notebook "
        "first makes two small runs on a tiny model, NSGA-II and random search with the same budget and seed."
    ),
    new_code_cell(
        "from pathlib import Path\n"
        "import tempfile\n\n"
        "RUNS = []  # e.g. [\"runs/search-nsga2\", \"runs/search-random\"]\n"
        "MAC_BUDGET = None  # MACs; None picks the median MACs of the first run's front"
    ),
    new_code_cell(
        "if not RUNS:\n"
        "    from lorasearch import NetworkSettings, SearchRun, SearchSettings, TaskSettings\n\n"
        "    work = Path(tempfile.mkdtemp(prefix=\"lorasearch-runs-\"))\n"
        "    for strategy in (\"nsga2\", \"random\"):\n"
        "        plan = SearchRun(\n"
        "            network=NetworkSettings(model=\"tiny-llama\", space=\"../search_spaces/tiny-llama.yaml\"),\n"
        "            task=TaskSettings(task=None, evaluator=\"text\", limit=20),\n"
        "            settings=SearchSettings(strategy=strategy, budget=16, population=8, seed=0),\n"
        "        )\n"
        "        plan.run(work / strategy)\n"
        "        RUNS.append(work / strategy)\n"
        "RUNS"
    ),
    new_markdown_cell("## Open the runs"),
    new_code_cell(
        "from lorasearch import load_run\n\n"
        "runs = [load_run(path) for path in RUNS]\n"
        "for run in runs:\n"
        "    print(run.name, run.strategy, len(run.table), \"evaluations,\", len(run.pareto), \"on the front\")\n"
        "runs[0].table.head()"
    ),
    new_markdown_cell("## Compare the strategies: fronts and hypervolume against evaluations"),
    new_code_cell(
        "from lorasearch.report import comparison_figure\n\n"
        "comparison_figure(runs)"
    ),
    new_markdown_cell("## Pick the most accurate subnet under a MAC budget"),
    new_code_cell(
        "from lorasearch import pick_config\n\n"
        "front = runs[0].pareto\n"
        "budget = MAC_BUDGET or float(front[\"macs\"].median())\n"
        "row, config = pick_config(runs[0].table, f\"max-accuracy-under-macs {budget}\")\n"
        "print(f\"evaluation {int(row['eval_id'])}: accuracy {row['accuracy']:.3f}, {row['macs'] / 1e6:.2f} MMACs\")\n"
        "config"
    ),
]


def write(name: str, cells: list) -> Path:
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = HERE / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    for name, cells in (("quickstart.ipynb", QUICKSTART), ("analyse_runs.ipynb", ANALYSIS)):
        print(write(name, cells))
