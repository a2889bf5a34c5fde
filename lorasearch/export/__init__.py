"""What a user ships: a subnet's config, a stock-PEFT sub-adapter, a merged or a physically pruned
model (`exporters`), the layout of a pruned folder and reading it back (`pruned`), and the per-block
modeling code a pruned folder carries for stock transformers (`decilm`)."""

from .exporters import EXPORTERS, export_config, export_merged, export_peft, export_pruned
from .pruned import load_pruned

__all__ = ["EXPORTERS", "export_config", "export_merged", "export_peft", "export_pruned", "load_pruned"]
