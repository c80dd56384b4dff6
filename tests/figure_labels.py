"""What a reader of a figure sees: its tick labels and their boxes, and whether any two collide."""


def shown_labels(fig, axis):
    """The tick labels a reader sees on `axis` (major and minor), with their boxes on the drawn canvas."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    low, high = sorted(axis.get_view_interval())
    labels = []
    for t in ticks:
        for text in (t.label1, t.label2):
            if text.get_visible() and text.get_text() and low <= t.get_loc() <= high:
                labels.append((text.get_text(), text.get_window_extent(renderer)))
    return labels


def assert_legible(labels, at_least: int, along: str = "x"):
    """At least `at_least` labels, no two of which overlap along the axis."""
    assert len(labels) >= at_least, [text for text, _ in labels]
    spans = sorted((b.x0, b.x1, t) if along == "x" else (b.y0, b.y1, t) for t, b in labels)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert end < start, f"tick labels {a!r} and {b!r} overlap"
