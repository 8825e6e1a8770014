rule summarize:
    input:
        summary_inputs,
    output:
        report(
            f"{RESULTS}/{{experiment}}/summary.csv",
            caption="../report/summary.rst",
            category="{experiment}",
            labels={"experiment": "{experiment}", "output": "summary"},
        ),
    params:
        runs=lambda wildcards: " ".join(run.dir for _, run in PLAN.experiments[wildcards.experiment].runs),
        methods=lambda wildcards: " ".join(label for label, _ in PLAN.experiments[wildcards.experiment].runs),
        roles=lambda wildcards: " ".join(run.role for _, run in PLAN.experiments[wildcards.experiment].runs),
    log:
        f"{LOGS}/summarize/{{experiment}}.log",
    benchmark:
        f"{LOGS}/benchmark/summarize/{{experiment}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m rckd summarize --experiment {wildcards.experiment} --runs {params.runs} "
        "--roles {params.roles} --methods {params.methods} --out {output} > {log} 2>&1"


rule table:
    input:
        summary=f"{RESULTS}/{{experiment}}/summary.csv",
        published=os.path.join(workflow.basedir, "config", "published.yaml"),
    output:
        md=report(
            f"{RESULTS}/{{experiment}}/table.md",
            caption="../report/table.rst",
            category="{experiment}",
            labels={"experiment": "{experiment}", "output": "table (markdown)"},
        ),
        csv=report(
            f"{RESULTS}/{{experiment}}/table.csv",
            caption="../report/table.rst",
            category="{experiment}",
            labels={"experiment": "{experiment}", "output": "table"},
        ),
    params:
        kind=lambda wildcards: PLAN.experiments[wildcards.experiment].kind,
    log:
        f"{LOGS}/table/{{experiment}}.log",
    benchmark:
        f"{LOGS}/benchmark/table/{{experiment}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m rckd table --experiment {wildcards.experiment} --kind {params.kind} --summary {input.summary} "
        "--published {input.published} --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"


rule plot:
    input:
        f"{RESULTS}/{{experiment}}/summary.csv",
    output:
        report(
            f"{RESULTS}/{{experiment}}/{{figure}}.png",
            caption="../report/plot.rst",
            category="{experiment}",
            labels={"experiment": "{experiment}", "output": "{figure}"},
        ),
    wildcard_constraints:
        figure="|".join(figures()),
    log:
        f"{LOGS}/plot/{{experiment}}-{{figure}}.log",
    benchmark:
        f"{LOGS}/benchmark/plot/{{experiment}}-{{figure}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m rckd plot --kind {wildcards.figure} --summary {input} --out {output} > {log} 2>&1"
