#!/usr/bin/env bash
# Snakemake runs this once in the conda env of rckd.yaml right after creating it: it installs the
# workflow's own rckd package there. Editable, so the env runs the checkout's current code (what
# snakemake's code-change triggers assume), and without dependencies (rckd.yaml pins them all).
# RCKD_WORKFLOW is the checkout, set by workflow/rules/common.smk in the snakemake process.
set -euo pipefail
: "${RCKD_WORKFLOW:?not set; snakemake --use-conda runs this script with it (workflow/rules/common.smk)}"
python -m pip install --quiet --no-deps --no-build-isolation --editable "$RCKD_WORKFLOW"
python -c 'import rckd, sys; print("rckd", rckd.__version__, "from", rckd.__file__, file=sys.stderr)'
