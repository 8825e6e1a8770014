"""The workflow's plan, torch-free: `plan(config) -> Plan`, the run records, the run names and the kinds.

workflow/rules/common.smk calls `plan` once on the validated config; the rules read the records.
"""

from rckd.plan.jobs import data_options_args, import_args, train_args
from rckd.plan.naming import format_params, parse_params, run_name
from rckd.plan.planner import check_layout, plan
from rckd.plan.records import Experiment, Plan, Run, Schedule

__all__ = ["Experiment", "Plan", "Run", "Schedule", "check_layout", "data_options_args", "format_params",
           "import_args", "parse_params", "plan", "run_name", "train_args"]
