"""app.py's page in Chromium: every card draws its probability bars at the same width, Grad-CAM shown or not."""
from test_app import photos, server  # noqa: F401 (server: the app serving the trained test checkpoint)

TRACK_WIDTHS = ("cards => cards.map(card => [...card.querySelectorAll('.bar-track')]"
                ".map(track => track.getBoundingClientRect().width))")


def test_every_card_draws_its_bars_at_the_same_width_with_or_without_grad_cam(server, page, flower_sample):  # noqa: F811
    chosen = photos(flower_sample, 3)
    page.goto(server + "/")
    page.set_input_files("#file-input", [str(photo) for photo in chosen])
    page.locator(".card .bar").nth(3 * 3 - 1).wait_for()  # three classes per card, three cards
    page.locator(".card .cam-button").nth(1).click()  # the middle card shows its map beside the photo
    page.wait_for_selector(".card .cam:not([hidden])")
    assert page.locator(".card .cam:not([hidden])").count() == 1
    for width in (1280, 600):  # side by side, and stacked on a narrow screen
        page.set_viewport_size({"width": width, "height": 900})
        widths = page.eval_on_selector_all(".card", TRACK_WIDTHS)
        assert len(widths) == 3 and all(len(card) == 3 for card in widths), widths
        assert max(map(max, widths)) - min(map(min, widths)) < 0.5, f"at {width} px: {widths}"
        assert min(map(min, widths)) > 100, widths
