"""About a hundred bad inputs a user can give the CLI: space files, task files, adapters, run files
and flags. Each must end in a non-zero exit, no traceback, at most three lines on stderr, and name
the offending file or option.

Every case runs in this process through `lorasearch.cli.main` on the tiny models; the files are
written once per module (a fresh adapter, a finished search of four evaluations).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_SPACE, run_cli
from safetensors.torch import load_file, save_file

from lorasearch.cli import main
from lorasearch.data import synthetic_task
from lorasearch.models.loading import tiny_model
from lorasearch.network.supernet import SuperNetwork

SPACE_TEXT = TINY_SPACE.read_text()
GOOD_GROUP = "groups: {up: {modules: [mlp.up_proj], rank: [8, 4]}}"


def space(body: str) -> str:
    return f"name: bad\nadapter: {{rank: 8, alpha: 16}}\nper_layer: model.layers.{{i}}\n{body}\n"


def alias_bomb(levels: int) -> str:
    value = "&a0 [x, x, x, x, x, x, x, x, x]"
    for i in range(1, levels + 1):
        value = f"&a{i} [{value}, " + ", ".join([f"*a{i - 1}"] * 8) + "]"
    return value


# name -> file content (str, or bytes when the bytes matter)
SPACES = {
    "s_latin1": "name: caf\xe9\n".encode("latin-1"),
    "s_binary": bytes(range(256)) * 4,
    "s_syntax": "name: bad\ngroups: [a, b\n",
    "s_tag": "name: !!python/object/apply:os.system ['echo owned']\ngroups: {}\n",
    "s_bomb": space(f"description: {alias_bomb(10)}\n{GOOD_GROUP}"),
    "s_aliases": space(f"description: {alias_bomb(13)}\n{GOOD_GROUP}"),
    "s_recursive": space(f"description: &d [*d]\n{GOOD_GROUP}"),
    "s_dupkey": space(f"{GOOD_GROUP}\nname: again"),
    "s_list": "- name\n- groups\n",
    "s_empty": "",
    "s_unknown_key": space(f"{GOOD_GROUP}\ncolour: blue"),
    "s_ascending": space("groups: {up: {modules: [mlp.up_proj], rank: [4, 8]}}"),
    "s_rank_text": space("groups: {up: {modules: [mlp.up_proj], rank: [8, four]}}"),
    "s_rank_negative": space("groups: {up: {modules: [mlp.up_proj], rank: [8, -4]}}"),
    "s_width_big": space("groups: {mlp: {width: [1.5, 1.0], channels: mlp}}"),
    "s_two_kinds": space("groups: {up: {modules: [mlp.up_proj], rank: [8, 4], width: [1.0, 0.5]}}"),
    "s_no_kind": space("groups: {up: {modules: [mlp.up_proj]}}"),
    "s_no_groups": space("groups: {}"),
    "s_bad_name": space("groups: {'up proj': {modules: [mlp.up_proj], rank: [8, 4]}}"),
    "s_share": space("groups: {up: {modules: [mlp.up_proj], rank: [8, 4], share: everyone}}"),
    "s_layers": "name: bad\nadapter: {rank: 8}\nnum_layers: -2\nper_layer: model.layers.{i}\n" + GOOD_GROUP + "\n",
    "s_alpha": "name: bad\nadapter: {rank: 8, alpha: -1}\n" + GOOD_GROUP + "\n",
    "s_not_in_model": space("groups: {up: {modules: [mlp.nope_proj], rank: [8, 4]}}"),
    "s_heads": space("groups: {heads: {heads: [4, 3]}}"),
    "s_json_dup": '{"name": "x", "adapter": {"rank": 8}, "groups": {"up": {"modules": ["mlp.up_proj"], '
                  '"rank": [8, 4]}, "up": {"modules": ["mlp.up_proj"], "rank": [8, 4]}}}',
    "s_json_syntax": '{"name": "x", "groups": {',
}
SUFFIX = {"s_json_dup": ".json", "s_json_syntax": ".json"}


def task_rows(n: int = 6) -> list[dict[str, str]]:
    return [r.to_dict() for r in synthetic_task(n, seed=3)]


def with_answer(answer: str) -> list[dict[str, str]]:
    rows = task_rows()
    rows[2]["answer"] = answer
    return rows


TASKS = {
    "t_latin1": ('[{"instruction": "caf' + "\xe9" + '"}]').encode("latin-1"),
    "t_latin1_l": ('{"instruction": "caf' + "\xe9" + '"}\n').encode("latin-1"),
    "t_syntax": "[{\"instruction\": ",
    "t_object": json.dumps(task_rows()[0]),
    "t_empty": "[]",
    "t_missing_field": json.dumps([{k: v for k, v in r.items() if k != "answer"} for r in task_rows()]),
    "t_strings": json.dumps(["one", "two"]),
    "t_list_field": json.dumps([{**task_rows()[0], "instruction": ["a", "b"]}]),
    "t_bad_answer": json.dumps(with_answer("answer9")),
    "t_one_label": json.dumps([{**task_rows()[0], "instruction": "Pick. Answer1: a\n\nAnswer format: answer1"}]),
}
TASK_SUFFIX = {"t_latin1_l": ".jsonl"}


# ---------------------------------------------------------------------------------- the files
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    paths: dict[str, str] = {"tmp": str(root), "space": str(TINY_SPACE)}
    for name, content in SPACES.items():
        write(paths, root / f"{name}{SUFFIX.get(name, '.yaml')}", content, name)
    (root / "s_folder").mkdir()
    paths["s_folder"] = str(root / "s_folder")
    for name, content in TASKS.items():
        write(paths, root / f"{name}{TASK_SUFFIX.get(name, '.json')}", content, name)
    write(paths, root / "t_line.jsonl", json.dumps(task_rows()[0]) + "\n{oops\n", "t_line")
    write(paths, root / "t_good.jsonl", "".join(json.dumps(r) + "\n" for r in task_rows(24)), "t_good")
    (root / "t_folder").mkdir()
    (root / "t_folder" / "notes.txt").write_text("no task here")
    paths["t_folder"] = str(root / "t_folder")
    adapters(root, paths)
    runs(root, paths)
    configs(root, paths)
    return paths


def write(paths: dict[str, str], path: Path, content: str | bytes, name: str) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    paths[name] = str(path)


def adapters(root: Path, paths: dict[str, str]) -> None:
    net = SuperNetwork(tiny_model("llama"), TINY_SPACE)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    good = net.save_adapter(root / "a_good")
    paths["a_good"] = str(good)
    config = json.loads((good / "adapter_config.json").read_text())
    q0 = "base_model.model.model.layers.0.self_attn.q_proj"

    def variant(name: str, config_text: str | bytes | None = None, tensors=None, drop: str | None = None) -> None:
        folder = Path(shutil.copytree(good, root / name))
        paths[name] = str(folder)
        if config_text is not None:
            data = config_text if isinstance(config_text, bytes) else config_text.encode()
            (folder / "adapter_config.json").write_bytes(data)
        if tensors is not None:
            found = load_file(str(folder / "adapter_model.safetensors"))
            tensors(found)
            save_file(found, str(folder / "adapter_model.safetensors"))
        if drop is not None:
            (folder / drop).unlink()

    def edited(**changes) -> str:
        return json.dumps({**config, **changes})

    variant("a_no_config", drop="adapter_config.json")
    variant("a_config_syntax", '{"r": 8,')
    variant("a_config_latin1", '{"peft_type": "LORA", "r": 8, "x": "caf\xe9"}'.encode("latin-1"))
    variant("a_config_list", "[1, 2]")
    variant("a_config_dup", json.dumps(config)[:-1] + ', "r": 4}')
    variant("a_not_lora", edited(peft_type="IA3"))
    variant("a_dora", edited(use_dora=True))
    variant("a_bias", edited(bias="all"))
    variant("a_r_zero", edited(r=0))
    variant("a_r_wrong", edited(r=4))
    variant("a_rank_pattern", edited(rank_pattern={"q_proj": 4}))
    variant("a_no_weights", drop="adapter_model.safetensors")
    variant("a_corrupt")
    (root / "a_corrupt" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    variant("a_no_b", tensors=lambda t: t.pop(f"{q0}.lora_B.weight"))
    variant("a_shape", tensors=lambda t: t.update({f"{q0}.lora_A.weight": torch.zeros(8, 32),
                                                    f"{q0}.lora_B.weight": torch.zeros(64, 8)}))
    ghost = "base_model.model.model.layers.9.self_attn.q_proj"
    variant("a_ghost", tensors=lambda t: t.update({f"{ghost}.lora_A.weight": torch.zeros(8, 64),
                                                    f"{ghost}.lora_B.weight": torch.zeros(64, 8)}))
    variant("a_space_bad")
    (root / "a_space_bad" / "lorasearch_space.yaml").write_text("name: [unclosed\n")
    paths["a_missing"] = str(root / "a_missing")


def runs(root: Path, paths: dict[str, str]) -> None:
    good = root / "r_good"
    run_cli("search", "--model", "tiny-llama", "--space", TINY_SPACE, "--limit", "4", "--budget", "4",
            "--population", "4", "--out", good)
    paths["r_good"] = str(good)
    document = yaml.safe_load((good / "run.yaml").read_text())

    def variant(name: str, run_yaml: str | bytes | None = None, log: str | None = None) -> None:
        folder = Path(shutil.copytree(good, root / name))
        paths[name] = str(folder)
        paths[f"{name}_yaml"] = str(folder / "run.yaml")
        paths[f"{name}_log"] = str(folder / "evaluations.jsonl")
        if run_yaml is not None:
            (folder / "run.yaml").write_bytes(run_yaml if isinstance(run_yaml, bytes) else run_yaml.encode())
        if log is not None:
            (folder / "evaluations.jsonl").write_text(log)
            (folder / "results.csv").unlink()

    def edited(section: str, **changes) -> str:
        return yaml.safe_dump({**document, section: {**document[section], **changes}}, sort_keys=False)

    variant("r_tag", "run: !!python/object/apply:os.system ['echo owned']\n")
    variant("r_latin1", "run: {task: caf\xe9}\n".encode("latin-1"))
    variant("r_syntax", "run: {network: [\n")
    variant("r_list", "- run\n- search\n")
    variant("r_network_field", edited("run", network={**document["run"]["network"], "colour": "blue"}))
    variant("r_search_field", edited("search", temperature=3))
    variant("r_bounds", yaml.safe_dump({**document, "bounds": [{"name": "accuracy", "colour": 1}]}))
    variant("r_bomb", f"run: {alias_bomb(10)}\n")
    lines = (good / "evaluations.jsonl").read_text().splitlines()
    variant("r_middle", log="\n".join([lines[0], lines[1][:30], *lines[2:]]) + "\n")
    variant("r_no_yaml")
    (root / "r_no_yaml" / "run.yaml").unlink()
    (root / "r_empty").mkdir()
    paths["r_empty"] = str(root / "r_empty")
    paths["r_missing"] = str(root / "r_missing")
    train = root / "tr_bad"  # a training folder whose train_run.yaml was damaged
    train.mkdir()
    (train / "train_run.yaml").write_text("args: {steps: [\n")
    paths["tr_bad"] = str(train)


def configs(root: Path, paths: dict[str, str]) -> None:
    write(paths, root / "c_yaml.json", "attn.0: 8\n", "c_yaml")
    write(paths, root / "c_gene.json", json.dumps({"nope.0": 8}), "c_gene")
    full = {f"{group}.{layer}": value for group, value in (("attn", 8), ("up", 8), ("mlp", 1.0), ("heads", 4))
            for layer in range(4)}
    write(paths, root / "c_value.json", json.dumps({**full, "up.0": 5}), "c_value")
    write(paths, root / "c_partial.json", json.dumps({"up.0": 8}), "c_partial")
    write(paths, root / "c_list.json", "[8, 4]", "c_list")
    write(paths, root / "c_import.json", "{not json", "c_import")


# ---------------------------------------------------------------------------------- the table
TINY = "--model tiny-llama --space {space}"
EVAL = f"eval {TINY} --limit 4 --task"
ADAPTER = "eval --model tiny-llama --limit 4 --adapter"

CASES = [
    # space files
    ("space missing", "space show {tmp}/nowhere.yaml", "{tmp}/nowhere.yaml"),
    ("space not UTF-8", "space show {s_latin1}", "{s_latin1}: not UTF-8"),
    ("space binary", "space show {s_binary}", "{s_binary}"),
    ("space YAML syntax", "space show {s_syntax}", "{s_syntax}: line"),
    ("space YAML tag", "space show {s_tag}", "{s_tag}: line 1"),
    ("space alias bomb", "space show {s_bomb}", "{s_bomb}: line"),
    ("space too many aliases", "space show {s_aliases}", "{s_aliases}: line"),
    ("space recursive alias", "space show {s_recursive}", "{s_recursive}: line"),
    ("space repeated key", "space show {s_dupkey}", "{s_dupkey}: line"),
    ("space a list", "space show {s_list}", "{s_list}"),
    ("space empty", "space show {s_empty}", "{s_empty}"),
    ("space unknown key", "space show {s_unknown_key}", "{s_unknown_key}: colour"),
    ("space ascending ranks", "space show {s_ascending}", "{s_ascending}: groups.up.rank"),
    ("space rank not a number", "space show {s_rank_text}", "{s_rank_text}: groups.up.rank"),
    ("space negative rank", "space show {s_rank_negative}", "{s_rank_negative}: groups.up.rank"),
    ("space width above 1", "space show {s_width_big}", "{s_width_big}: groups.mlp.width"),
    ("space two kinds", "space show {s_two_kinds}", "{s_two_kinds}: groups.up"),
    ("space no kind", "space show {s_no_kind}", "{s_no_kind}: groups.up"),
    ("space no groups", "space show {s_no_groups}", "{s_no_groups}: groups"),
    ("space bad group name", "space show {s_bad_name}", "{s_bad_name}"),
    ("space bad share", "space show {s_share}", "{s_share}: groups.up.share"),
    ("space bad num_layers", "space show {s_layers}", "{s_layers}: num_layers"),
    ("space bad alpha", "space show {s_alpha}", "{s_alpha}: adapter.alpha"),
    ("space module not in model", "cost --model tiny-llama --space {s_not_in_model}", "{s_not_in_model}"),
    ("space heads not a multiple", "cost --model tiny-llama --space {s_heads}", "{s_heads}"),
    ("space JSON repeated group", "space show {s_json_dup}", "{s_json_dup}: key 'up' appears twice"),
    ("space JSON syntax", "space show {s_json_syntax}", "{s_json_syntax}: line 1"),
    ("space a folder", "space show {s_folder}", "{s_folder}"),
    ("space import not JSON", "space import {c_import}", "{c_import}"),
    # task files
    ("task missing", f"{EVAL} {{tmp}}/nowhere.json", "{tmp}/nowhere.json: task file not found"),
    ("task relative path missing", f"{EVAL} data/valid.json", "data/valid.json: task file not found"),
    ("task not UTF-8 (JSON)", f"{EVAL} {{t_latin1}}", "{t_latin1}: not UTF-8"),
    ("task not UTF-8 (JSONL)", f"{EVAL} {{t_latin1_l}}", "{t_latin1_l}: not UTF-8"),
    ("task JSON syntax", f"{EVAL} {{t_syntax}}", "{t_syntax}: not valid JSON"),
    ("task an object", f"{EVAL} {{t_object}}", "{t_object}: expected a JSON list"),
    ("task empty", f"{EVAL} {{t_empty}}", "{t_empty}: no records"),
    ("task missing field", f"{EVAL} {{t_missing_field}}", "{t_missing_field}: record 0: missing field 'answer'"),
    ("task strings", f"{EVAL} {{t_strings}}", "{t_strings}: record 0"),
    ("task list field", f"{EVAL} {{t_list_field}}", "{t_list_field}: record 0: field 'instruction'"),
    ("task answer not an option", f"{EVAL} {{t_bad_answer}}", "{t_bad_answer}: record 2: answer 'answer9'"),
    ("task one label", f"{EVAL} {{t_one_label}}", "{t_one_label}: record 0"),
    ("task JSONL bad line", f"{EVAL} {{t_line}}", "{t_line}: line 2"),
    ("task a plain folder", f"{EVAL} {{t_folder}}", "{t_folder}: a folder"),
    ("train task not UTF-8", f"train {TINY} --steps 1 --out {{tmp}}/tr1 --task {{t_latin1}}", "{t_latin1}: not UTF-8"),
    ("calibration missing", "sparsify --model tiny-llama --out {tmp}/sp --calibration {tmp}/no.json", "{tmp}/no.json"),
    # adapters
    ("adapter missing", f"{ADAPTER} {{a_missing}}", "{a_missing}"),
    ("adapter without config", f"{ADAPTER} {{a_no_config}}", "{a_no_config}/adapter_config.json: missing"),
    ("adapter config syntax", f"{ADAPTER} {{a_config_syntax}}", "{a_config_syntax}/adapter_config.json: line 1"),
    ("adapter config not UTF-8", f"{ADAPTER} {{a_config_latin1}}", "{a_config_latin1}/adapter_config.json: not UTF-8"),
    ("adapter config a list", f"{ADAPTER} {{a_config_list}}", "{a_config_list}/adapter_config.json"),
    ("adapter config repeated key", f"{ADAPTER} {{a_config_dup}}", "{a_config_dup}/adapter_config.json: key 'r'"),
    ("adapter not LoRA", f"{ADAPTER} {{a_not_lora}}", "{a_not_lora}/adapter_config.json: peft_type"),
    ("adapter DoRA", f"{ADAPTER} {{a_dora}}", "{a_dora}/adapter_config.json: use_dora"),
    ("adapter bias", f"{ADAPTER} {{a_bias}}", "{a_bias}/adapter_config.json: bias"),
    ("adapter r zero", f"{ADAPTER} {{a_r_zero}}", "{a_r_zero}/adapter_config.json: r"),
    ("adapter r contradicts tensors", f"{ADAPTER} {{a_r_wrong}}", "{a_r_wrong}/adapter_config.json: r says rank 4"),
    ("adapter rank_pattern contradicts", f"{ADAPTER} {{a_rank_pattern}}", "{a_rank_pattern}/adapter_config.json: rank_pattern"),
    ("adapter without weights", f"{ADAPTER} {{a_no_weights}}", "{a_no_weights}: no adapter_model.safetensors"),
    ("adapter corrupt weights", f"{ADAPTER} {{a_corrupt}}", "{a_corrupt}/adapter_model.safetensors: unreadable"),
    ("adapter lora_B missing", f"{ADAPTER} {{a_no_b}}", "{a_no_b}/adapter_model.safetensors"),
    ("adapter shape", f"{ADAPTER} {{a_shape}}", "{a_shape}/adapter_model.safetensors"),
    ("adapter module not in model", f"{ADAPTER} {{a_ghost}}", "model.layers.9.self_attn.q_proj"),
    ("adapter space file broken", f"{ADAPTER} {{a_space_bad}}", "{a_space_bad}/lorasearch_space.yaml: line"),
    ("adapter for another model", "eval --model tiny-phi3 --limit 4 --adapter {a_good}", "{a_good}"),
    # run files
    ("resume missing folder", "search --resume {r_missing}", "{r_missing}/run.yaml"),
    ("resume folder without run.yaml", "search --resume {r_no_yaml}", "{r_no_yaml}/run.yaml"),
    ("resume run.yaml YAML tag", "search --resume {r_tag}", "{r_tag_yaml}: line 1"),
    ("resume run.yaml not UTF-8", "search --resume {r_latin1}", "{r_latin1_yaml}: not UTF-8"),
    ("resume run.yaml syntax", "search --resume {r_syntax}", "{r_syntax_yaml}: line"),
    ("resume run.yaml a list", "search --resume {r_list}", "{r_list_yaml}"),
    ("resume run.yaml alias bomb", "search --resume {r_bomb}", "{r_bomb_yaml}: line 1"),
    ("resume unknown network field", "search --resume {r_network_field}", "{r_network_field_yaml}: run.network: unknown field 'colour'"),
    ("resume unknown search field", "search --resume {r_search_field}", "{r_search_field_yaml}: search: unknown field 'temperature'"),
    ("resume corrupt log line", "search --resume {r_middle}", "{r_middle_log}: line 2"),
    ("report corrupt log line", "report {r_middle}", "{r_middle_log}: line 2"),
    ("report bad bounds", "report {r_bounds}", "{r_bounds_yaml}: bounds"),
    ("report run.yaml YAML tag", "report {r_tag}", "{r_tag_yaml}: line 1"),
    ("report empty folder", "report {r_empty}", "{r_empty}"),
    ("report missing folder", "report {r_missing}", "{r_missing}"),
    ("plot missing folder", "plot {r_missing}", "{r_missing}"),
    ("plot corrupt log line", "plot {r_middle}", "{r_middle_log}: line 2"),
    ("export bad pick", "export {r_good} --pick best-ever", "best-ever"),
    ("export bad format", "export {r_good} --format onnx", "--format"),
    ("export into an existing folder", "export {r_good} --out {r_good}", "{r_good}"),
    ("run-file missing", "search --run-file {tmp}/nowhere.yaml --out {tmp}/x", "{tmp}/nowhere.yaml"),
    ("run-file not UTF-8", "search --run-file {r_latin1_yaml} --out {tmp}/x", "{r_latin1_yaml}: not UTF-8"),
    ("train_run.yaml broken", f"train {TINY} --steps 1 --batch-size 2 --max-length 32 --out {{tr_bad}} --resume",
     "{tr_bad}/train_run.yaml: line"),
    ("fresh search into a finished run", f"search {TINY} --budget 4 --population 4 --out {{r_good}}", "{r_good}: already holds"),
    # flags
    ("unknown option", "search --bogus", "--bogus"),
    ("budget not a number", "search --budget many", "--budget"),
    ("unknown command", "serach", "serach"),
    ("unknown strategy", f"search {TINY} --strategy annealing --out {{tmp}}/x", "strategy"),
    ("unknown objective", f"search {TINY} --objectives accuracy,speed --out {{tmp}}/x", "speed"),
    ("budget below population", f"search {TINY} --budget 3 --out {{tmp}}/x", "budget"),
    ("population 1", f"search {TINY} --population 1 --budget 4 --out {{tmp}}/x", "population"),
    ("search without --out", f"search {TINY}", "--out"),
    ("force without resume", f"search {TINY} --force --out {{tmp}}/x", "--force"),
    ("unknown backend", f"search {TINY} --backend cluster --out {{tmp}}/x", "--backend"),
    ("zero workers", f"search {TINY} --backend processes --workers 0 --out {{tmp}}/x", "--workers"),
    ("bad storage URL", f"search {TINY} --strategy tpe --storage nowhere --out {{tmp}}/x", "--storage"),
    ("bad constraint", f"search {TINY} --constraint 'macs < lots' --out {{tmp}}/x", "macs < lots"),
    ("unknown evaluator", f"eval {TINY} --evaluator vibes", "--evaluator"),
    ("limit zero", f"eval {TINY} --limit 0", "limit"),
    ("config unknown name", f"eval {TINY} --config medium", "--config"),
    ("config not JSON", f"eval {TINY} --config {{c_yaml}}", "{c_yaml}: line 1"),
    ("config unknown gene", f"eval {TINY} --config {{c_gene}}", "{c_gene}: config: unknown key 'nope.0'"),
    ("config value not a choice", f"eval {TINY} --config {{c_value}}", "{c_value}: config: up.0=5 is not a choice"),
    ("config a gene missing", f"eval {TINY} --config {{c_partial}}", "{c_partial}: config: key 'attn.0' is missing"),
    ("config a list", f"eval {TINY} --config {{c_list}}", "{c_list}"),
    ("unknown dtype", f"cost {TINY} --dtype fp12", "--dtype"),
    ("unknown counter", f"cost {TINY} --counter abacus", "--counter"),
    ("unknown deployment", f"cost {TINY} --deployment fused", "deployment"),
    ("seq-len zero", f"cost {TINY} --seq-len 0", "seq_len"),
    ("model path missing", "cost --model ./models/nowhere --space {space}", "./models/nowhere"),
    ("GGUF file missing", "cost --model {tmp}/model.gguf --space {space}", "{tmp}/model.gguf"),
    ("unknown tiny family", "cost --model tiny-gpt --space {space}", "tiny-gpt"),
    ("bad schedule", f"train {TINY} --schedule step --out {{tmp}}/tr2", "schedule"),
    ("bad sampler", f"train {TINY} --sampler greedy --out {{tmp}}/tr3", "greedy"),
    ("steps zero", f"train {TINY} --steps 0 --out {{tmp}}/tr4", "steps"),
    ("bad val-size", f"train {TINY} --steps 1 --val-size 0.999999 --out {{tmp}}/tr5", "val_size"),
    ("sparsity ratio", "sparsify --model tiny-llama --method magnitude --ratio 1.5 --out {tmp}/sp2", "ratio"),
    ("quantize group size", "quantize --model tiny-llama --group-size 7 --out {tmp}/q", "group"),
]
if not torch.cuda.is_available():
    CASES.append(("cuda without a GPU", f"train {TINY} --steps 1 --device cuda --out {{tmp}}/tr6", "cuda"))


def test_the_table_is_large_and_covers_every_kind():
    assert len(CASES) >= 60
    kinds = {kind: sum(name.startswith(kind) for name, _, _ in CASES) for kind in ("space", "task", "adapter")}
    kinds["run files"] = sum("{r_" in command or "{tr_" in command for _, command, _ in CASES)
    kinds["flags"] = sum("--" in named for _, _, named in CASES)
    assert all(count >= 8 for count in kinds.values()), kinds


@pytest.mark.parametrize("command, named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_ends_in_one_line_naming_it(files, capsys, monkeypatch, command, named):
    monkeypatch.chdir(files["tmp"])
    args = shlex.split(command.format_map(files))
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert exc.value.code not in (0, None), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert lines and len(lines) <= 3 and lines[0].startswith("error: "), err
    assert named.format_map(files) in lines[0], err

