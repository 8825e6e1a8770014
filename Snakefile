# rckd: the paper's experiments as one reproducible DAG.
#   snakemake --cores 8 --use-conda                          # CIFAR-100, the published protocol (GPU)
#   snakemake --cores 2 --configfile config/quick.yaml       # synthetic data, CPU, minutes
import os

from snakemake.utils import min_version

min_version("9.0")


# Always the checkout's default, also when the working directory (-d) is elsewhere; --configfile and
# --config are merged on top of it (nested mappings key by key, lists replaced whole).
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    run=RUN_PATTERN,


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/deploy.smk"


# Small jobs stay on the submitting host under a cluster executor: the data download (compute nodes
# are often offline), the teacher import, the summaries, tables and plots.
localrules:
    all,
    prepare_data,
    import_teacher,
    summarize,
    table,
    plot,


rule all:
    input:
        PLAN.outputs(),
    default_target: True
