"""The modeling code that a per-layer pruned export carries in its folder.

``configuration_decilm.py`` and ``modeling_decilm.py`` import only torch and transformers: an
export copies them next to ``config.json`` (whose ``auto_map`` names them), so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads the folder on a
machine without lorasearch. `lorasearch.export.pruned.load_pruned` imports the same two modules
from here instead, so it never runs code from a folder.
"""
