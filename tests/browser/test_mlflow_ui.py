"""The MLflow UI in a real browser: the comparison of the curation-variant runs and the experiment's runs table.

The store is the one `svdpipe train` and `svdpipe evaluate` wrote on the sample corpus (the shared ``trained``
fixture): the compared runs are the pipeline's evaluation runs of both variants, tagged ``curation_variant``,
``stage`` and ``dataset_version``. URLs are those of MLflow 3.x's
hash router: ``#/compare-runs?runs=[...]&experiments=[...]`` and ``#/experiments/<id>/runs``.
"""

from __future__ import annotations


import pytest

# The first test here may build the session's `trained` root (both variants, all stages): its setup counts.
pytestmark = pytest.mark.timeout(1800)



def _page_text(page, limit: int = 2000) -> str:
    text = " | ".join(line for line in page.inner_text("body").splitlines() if line.strip())
    return text[:limit]


def _row(page, label: str):
    """The comparison table's row for a param, metric or tag: its label cell, then one cell per run."""
    return page.locator("tr").filter(has=page.get_by_text(label, exact=True))


def _metric_grid(page, columns: int) -> dict[str, list[str]]:
    """The Metrics section of the comparison: metric name -> last value per run column. MLflow draws it as
    two aligned virtualized grids, the names (links to the metric plot) and the values, of a few rows at a time;
    this scrolls the values grid (with the mouse wheel, as a person does; the names follow) from top to bottom and
    pairs the rendered names and cells by their row's offset."""
    switch = page.get_by_role("switch", name="Metrics - Show diff only")
    section = switch.locator("xpath=ancestor::div[.//div[@role='grid']][1]")
    grids = section.locator("[role='grid']")
    if grids.count() < 2:
        return {"(layout)": [f"{grids.count()} grids in the Metrics section"]}
    read = "g => [...g.querySelectorAll(\"[role='rowgroup'] > div\")].map(c => [c.style.top, c.style.left, c.innerText.trim()])"
    rows: dict[str, list[tuple[str, str]]] = {}
    names: dict[str, str] = {}
    values = grids.nth(1)
    values.hover()
    for _ in range(200):  # a bound, not a wait: each pass scrolls one viewport down
        names.update({top: text for top, _, text in grids.nth(0).evaluate(read)})
        for top, left, text in values.evaluate(read):
            cells = rows.setdefault(top, [])
            if (left, text) not in cells and left not in [c[0] for c in cells]:
                cells.append((left, text))
        before = values.evaluate("g => g.scrollTop")
        page.mouse.wheel(0, values.evaluate("g => g.clientHeight"))
        page.wait_for_timeout(100)  # the grid renders the rows scrolled into view on the next frame
        if values.evaluate("g => g.scrollTop") == before:
            break
    table = {}
    for top, name in names.items():
        cells = sorted(rows.get(top, []), key=lambda c: float(c[0].rstrip("px") or 0))
        table[name] = [text for _, text in cells]
    if any(len(v) != columns for v in table.values()):
        return {"(layout)": [f"{len(table)} metric names whose cells are not {columns} per row: {table}"]}
    return table


def _expand_pipeline_runs(page, url: str, names: list[str], shots, what: str) -> None:
    """What a person does on the runs table: the stage runs are children of their pipeline run, collapsed; they
    press the expand button beside each ``pipeline <run>`` row's name until the runs they look for are listed."""
    page.goto(url, wait_until="domcontentloaded")
    try:
        page.get_by_role("link", name="pipeline ", exact=False).first.wait_for(timeout=60_000)
        parents = page.locator("[role='row']").filter(has=page.get_by_role("link", name="pipeline ", exact=False))
        for i in range(parents.count()):
            parents.nth(i).locator("[col-id='attributes.`Run Name`'] button").first.click()
        for name in names:
            page.get_by_role("link", name=name, exact=True).first.wait_for(timeout=30_000)
    except Exception as e:  # noqa: BLE001 - report what the page shows instead
        shot = shots.take(page, f"{what}_FAILED")
        pytest.fail(f"runs table at {url} does not list {names} under their pipeline runs ({e.__class__.__name__}); "
                    f"screenshot {shot}; page text: {_page_text(page)}", pytrace=False)


def _run_row(page, name: str):
    return page.locator("[role='row']").filter(has=page.get_by_role("link", name=name, exact=True)).first


def test_compare_runs_shows_both_variants_and_the_metric(mlflow_ui, page, shots):
    """Tick the two variants' evaluation runs in the runs table, press Compare: both runs side by side, their
    variant tags, val_loss of each, the config params, and val_loss (not a count) as the default plot."""
    run_ids = [mlflow_ui.runs[v].info.run_id for v in ("uncurated", "svd")]
    names = [mlflow_ui.runs[v].info.run_name for v in ("uncurated", "svd")]
    start = f"{mlflow_ui.url}/#/experiments/{mlflow_ui.experiment_id}/runs"
    _expand_pipeline_runs(page, start, names, shots, "mlflow_compare_select")
    for name in names:
        _run_row(page, name).get_by_role("checkbox").first.check()
    page.get_by_role("button", name="Compare", exact=True).click()
    try:
        page.get_by_text("Comparing 2 Runs", exact=False).first.wait_for(timeout=45_000)
        _row(page, "curation_variant").first.wait_for(timeout=30_000)
        page.get_by_role("switch", name="Metrics - Show diff only").wait_for(timeout=30_000)
    except Exception as e:  # noqa: BLE001 - report what the page shows instead
        shot = shots.take(page, "mlflow_compare_runs_FAILED", full_page=True)
        pytest.fail(f"run comparison of {names} did not render ({e.__class__.__name__}) at {page.url}; screenshot "
                    f"{shot}; page text: {_page_text(page)}", pytrace=False)
    page.wait_for_timeout(500)  # the parallel-coordinates plot draws after the tables
    shot = shots.take(page, "mlflow_compare_runs", full_page=True)
    where = f"at {page.url}; screenshot {shot}"

    header = page.locator("tr").filter(has_text="Run ID:").first.inner_text()
    for rid in run_ids:
        assert rid in header, f"run {rid} is not a column of the comparison {where}: {header!r}"

    variant_row = " ".join(_row(page, "curation_variant").first.inner_text().split())
    assert "uncurated" in variant_row.split() and "svd" in variant_row.split(), (
        f"curation_variant row does not show both variants {where}: {variant_row!r}")
    for tag, value in (("stage", "eval"),):
        row = " ".join(_row(page, tag).first.inner_text().split())
        assert row.split().count(value) == 2, f"tag {tag} is not {value} for both runs {where}: {row!r}"

    metrics = _metric_grid(page, len(run_ids))
    expected = [mlflow_ui.runs[v].data.metrics["val_loss"] for v in ("uncurated", "svd")]
    shown = metrics.get("val_loss", [])
    assert len(shown) == 2 and all(abs(float(a) - b) <= 1e-3 * max(1, abs(b)) for a, b in zip(shown, expected)), (
        f"val_loss should read {expected} (uncurated, svd) in the Metrics table {where}; it shows {metrics}")
    assert page.get_by_text("evaluation.register_metric", exact=True).count(), f"config params not shown {where}"
    # The parallel-coordinates plot opens on the runs' first metric: the headline one, logged first.
    plotted = " ".join(page.get_by_text("Metrics:", exact=True).first.locator("xpath=..").inner_text().split())
    assert "val_loss" in plotted.split() and "n_val_clips" not in plotted, (
        f"the default plot should show val_loss {where}: {plotted!r}")


def test_runs_table_lists_both_variant_runs(mlflow_ui, page, shots):
    url = f"{mlflow_ui.url}/#/experiments/{mlflow_ui.experiment_id}/runs"
    names = [mlflow_ui.runs[v].info.run_name for v in ("uncurated", "svd")]
    _expand_pipeline_runs(page, url, names, shots, "mlflow_runs_table")
    shot = shots.take(page, "mlflow_runs_table")
    where = f"at {url}; screenshot {shot}"
    for v, name in zip(("uncurated", "svd"), names):
        row = " ".join(_run_row(page, name).inner_text().split())
        assert name in row, f"{v}: no row {name!r} {where}: {row!r}"
    assert page.get_by_text(mlflow_ui.experiment, exact=True).count(), f"experiment name not shown {where}"
    assert page.get_by_text("matching runs", exact=False).count(), f"runs table has no run count {where}"


def test_experiment_page_opens_on_the_stage_runs_with_variant_stage_and_metric_columns(mlflow_ui, page, shots):
    from svdpipe.tracking import experiment_path

    url = mlflow_ui.url + experiment_path(mlflow_ui.experiment_id)
    page.goto(url, wait_until="domcontentloaded")
    try:
        # One parent row per pipeline run; the stage runs are its children (expanded from the row).
        page.get_by_text("pipeline ", exact=False).first.wait_for(timeout=60_000)
    except Exception as e:  # noqa: BLE001
        shot = shots.take(page, "mlflow_experiment_view_FAILED")
        pytest.fail(f"experiment page at {url} does not list the stage runs ({e.__class__.__name__}); "
                    f"screenshot {shot}; page text: {_page_text(page)}", pytrace=False)
    page.wait_for_timeout(1000)
    shot = shots.take(page, "mlflow_experiment_view")
    where = f"at {url}; screenshot {shot}"
    headers = [" ".join(t.split()) for t in page.locator("[role='columnheader']").all_inner_texts()]
    for column in ("stage", "curation_variant", "val_loss", "loss"):
        assert column in headers, f"no {column} column {where}: {headers}"
    # A model-development experiment: the runs table, not GenAI's traces.
    assert not page.get_by_text("Token usage", exact=False).count(), f"GenAI view {where}"
    assert page.get_by_text(mlflow_ui.experiment, exact=True).count(), f"experiment name not shown {where}"
