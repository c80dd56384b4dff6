"""Model specs: what the head-count warning of a d2l archive names (the path the user gave, not the cache)."""

from test_d2l_archive import _archive

from bertnli.model.presets import build_model


def test_the_guessed_heads_warning_names_the_zip_the_user_gave(tmp_path, capsys):
    _, zpath, _, _ = _archive(tmp_path / "given", name="bert.warn.torch")
    build_model(f"d2l:{zpath}", dropout=0.0)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line.startswith(f"warning: d2l:{zpath} does not store its attention head count") and "model-cache" not in line
    )
