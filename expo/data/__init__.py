"""The data stage (prepare_data): load MATH- or GSM8K-style problems, extract gold answers, dedupe, split.

    from expo.data import prepare_data
    result = prepare_data(cfg.data, "runs/x/data", progress=True)

One source (`data.source`) or several concatenated (`data.sources`, each with its own schema, level and
seeded cap: e.g. MAWPS SingleOp, AddSub, MultiArith and GSM8K as levels 1-4).

Modules, in the order a row meets them: `sources` (hub, folder, files, built-ins -> raw tables),
`normalize` (raw row -> our row or a skip reason), `split` (level filter, dedupe, cap, stratified
split), `prepare` (the stage: counts, checks, atomic writes). CLI: `expo data` (expo/cli/data.py).
"""

from expo.data.normalize import FILTER_REASONS, SKIP_REASONS, parse_level, question_key, row_id
from expo.data.prepare import DataResult, format_summary, prepare_data
from expo.data.sources import BUILTINS, load_tables, source_entries

__all__ = ["BUILTINS", "FILTER_REASONS", "SKIP_REASONS", "DataResult", "format_summary", "load_tables",
           "parse_level", "prepare_data", "question_key", "row_id", "source_entries"]
