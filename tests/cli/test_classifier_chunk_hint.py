"""The chunk-length hint: upstream's ``300_model.pth`` / ``500_model.pth`` names, also through a converted
``.safetensors`` (its metadata names the source file)."""

from __future__ import annotations

import shutil

from tests.cli.helpers import run_cli


def test_a_classifier_named_for_the_other_length_warns_also_once_converted(tiny_set, reads_fasta, tmp_path):
    pth = tmp_path / "500_model.pth"
    shutil.copy(tiny_set.classifier, pth)
    converted = tmp_path / "clf.safetensors"
    assert run_cli("convert-classifier", str(pth), str(converted)).code == 0
    models = ("--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--device", "cpu")
    cases = ((pth, "300", True), (converted, "300", True), (converted, "500", False))
    for classifier, length, warned in cases:
        out = tmp_path / f"out-{classifier.suffix[1:]}-{length}"
        result = run_cli(
            "predict", str(reads_fasta), "-o", str(out), *models, "--classifier", str(classifier),
            "--chunk-length", length,
        )  # fmt: skip
        assert result.code == 0, result.stderr
        origin = "" if classifier == pth else " (from 500_model.pth)"
        hint = f"classifier {classifier.name}{origin} looks trained for 500 bp chunks"
        assert (hint in result.stderr) is warned, (classifier, length, result.stderr)
