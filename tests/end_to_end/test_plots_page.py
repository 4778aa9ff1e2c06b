"""The page `dvc plots show` writes, in a real browser with the network shut: every chart drawn by the page's
own code, every picture loaded from beside it."""

from __future__ import annotations

import pytest

from tests.helpers import loaded_images, run

# on a trained_repo worker (conftest.TRAINED_REPO_GROUPS)
pytestmark = [pytest.mark.pipeline, pytest.mark.slow]


def test_dvc_plots_page_draws_every_plot_with_the_network_shut(trained_repo, browser, shots, tmp_path):
    """`dvc plots show` writes one HTML page from the repository's template (.dvc/plots_offline.html), which
    carries Vega, Vega-Lite and Vega-Embed itself: with every network request refused, every chart is drawn by
    the page's own code and every picture loads from beside it."""
    repo, env = trained_repo
    out = tmp_path / "dvc_plots"
    run(["dvc", "plots", "show", "-o", str(out)], repo, env)
    html = (out / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in html
    requested = []

    def refuse(route):
        requested.append(route.request.url)
        route.abort()

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.route(lambda url: not url.startswith("file://"), refuse)  # no network at all
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((out / "index.html").as_uri())
    charts = ["loss", "accuracy", "reliability", "plots_confusion_csv"]
    for chart in charts:
        assert f'id = "{chart}"' in html, chart
        page.locator(f"#{chart} canvas, #{chart} svg").first.wait_for()
        box = page.locator(f"#{chart} canvas, #{chart} svg").first.bounding_box()
        assert box["width"] > 100 and box["height"] > 100, (chart, box)
    images = page.locator("img")
    sources = images.evaluate_all("images => images.map(i => i.getAttribute('src'))")
    grids = sorted(p.name for p in (repo / "plots/saliency").glob("*.png"))
    assert any(s.endswith("reliability.png") for s in sources)
    assert len([s for s in sources if "saliency" in s]) == len(grids) >= 1
    assert all(loaded_images(images)), f"an image of the plots page did not load: {sources}"
    assert requested == [] and not errors, (requested, errors)
    page.screenshot(path=shots / "7_dvc_plots_offline.png", full_page=True)
    page.close()
