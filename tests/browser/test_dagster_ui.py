"""The Dagster UI in a real browser: `svdpipe ui` serves the asset graph of ``orchestration.definitions``.

The expected assets, groups and checks are read from ``defs`` at test time, so new assets are covered as
they appear. URLs are those of Dagster 1.13: ``/asset-groups`` is the global asset lineage (groups start
collapsed; ``?expanded=global@global:<group>,...`` opens them) and ``/assets/<key>?view=checks`` lists an
asset's checks.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest


# Dagster's first-visit "Join the community" dialog would cover the graph in screenshots.
_NO_COMMUNITY_DIALOG = "window.localStorage.setItem('communityNux', JSON.stringify('1'));"


def _definitions():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    checks = sorted((key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys)
    return assets, checks


def _open(page, url: str) -> None:
    if not getattr(page.context, "_svdpipe_no_dialog", False):
        page.context.add_init_script(_NO_COMMUNITY_DIALOG)
        page.context._svdpipe_no_dialog = True
    page.goto(url, wait_until="domcontentloaded")
    skip = page.get_by_role("button", name="Skip")
    if skip.count():  # the dialog came anyway (its storage key changed): dismiss it
        skip.first.click()


def _page_text(page, limit: int = 1500) -> str:
    text = " | ".join(line for line in page.inner_text("body").splitlines() if line.strip())
    return text[:limit]


def test_asset_graph_shows_every_asset_of_the_definitions(dagster_ui, page, shots):
    assets, _ = _definitions()
    assert {"ingested_batch", "videos", "clip_scores", "clips", "curated_dataset"} <= set(assets), (
        f"orchestration.definitions lost core assets: {sorted(assets)}")
    groups = sorted({g for g in assets.values() if g})
    expanded = ",".join(quote(f"global@global:{g}", safe="") for g in groups)
    url = f"{dagster_ui.url}/asset-groups?expanded={expanded}"
    _open(page, url)

    graph = page.locator("svg foreignObject")  # the graph's nodes are HTML inside the SVG canvas
    try:
        for name in assets:
            graph.get_by_text(name, exact=True).first.wait_for(state="visible", timeout=45_000)
    except Exception as e:  # noqa: BLE001 - report what the page shows instead
        shot = shots.take(page, "dagster_asset_graph_FAILED")
        pytest.fail(f"asset graph at {url} did not show all assets ({e.__class__.__name__}); "
                    f"screenshot {shot}; page text: {_page_text(page)}", pytrace=False)
    page.wait_for_timeout(500)  # let the edges and the zoom-to-fit settle for the picture
    shot = shots.take(page, "dagster_asset_graph")

    missing = [name for name in assets if graph.get_by_text(name, exact=True).count() == 0]
    assert not missing, f"asset nodes missing from the graph at {url}: {missing}; screenshot {shot}"
    missing_groups = [g for g in groups if graph.get_by_text(g, exact=True).count() == 0]
    assert not missing_groups, f"asset groups missing from the graph at {url}: {missing_groups}; screenshot {shot}"
    assert page.get_by_text("Global asset lineage").count(), f"not the lineage page: {url}; screenshot {shot}"
    edges = page.locator("svg path").count()
    assert edges >= len(assets) - 1, f"only {edges} edges drawn for {len(assets)} assets at {url}; screenshot {shot}"


def test_asset_checks_are_listed_on_their_assets(dagster_ui, page, shots):
    _, checks = _definitions()
    assert checks, "orchestration.definitions defines no asset checks"
    for asset, check in checks:
        url = f"{dagster_ui.url}/assets/{asset}?view=checks"
        _open(page, url)
        name = f"{asset.replace('/', '_')}_checks"
        try:
            page.get_by_text(check, exact=True).first.wait_for(state="visible", timeout=30_000)
        except Exception as e:  # noqa: BLE001
            shot = shots.take(page, f"dagster_{name}_FAILED")
            pytest.fail(f"check {check} not listed at {url} ({e.__class__.__name__}); screenshot {shot}; "
                        f"page text: {_page_text(page)}", pytrace=False)
        shot = shots.take(page, f"dagster_{name}")
        assert page.get_by_text(asset, exact=True).count(), f"asset {asset} not named at {url}; screenshot {shot}"
