"""FittedPostProcessor: anomalib's and the rank-preserving post-processing with fixed statistics, bit for bit."""

import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.post_processing import PostProcessor

from anomalib_salad import Salad
from anomalib_salad.model.post_processing import (
    FittedPostProcessor,
    RankPreservingPostProcessor,
    fitted_post_processing,
)

from .conftest import TINY

NAN = float("nan")


def _post_processor(
    image: tuple[float, float, float], pixel: tuple[float, float, float], kind: type = PostProcessor, **kwargs
) -> PostProcessor:
    """A post-processor of class ``kind`` with (min, max, threshold) statistics for scores and maps."""
    post_processor = kind(**kwargs)
    for prefix, (minimum, maximum, threshold) in (("image", image), ("pixel", pixel)):
        getattr(post_processor, f"{prefix}_min").fill_(minimum)
        getattr(post_processor, f"{prefix}_max").fill_(maximum)
        getattr(post_processor, f"_{prefix}_threshold").fill_(threshold)
    return post_processor


def _predictions() -> InferenceBatch:
    generator = torch.Generator().manual_seed(0)
    anomaly_map = torch.rand(3, 1, 16, 16, generator=generator)
    anomaly_map[0, 0, 0, :3] = torch.tensor([0.5, 0.25, 0.75])  # on, below and above the thresholds used
    return InferenceBatch(pred_score=torch.tensor([0.5, 0.1, 0.9]), anomaly_map=anomaly_map)


CASES = {
    "fitted": {"image": (0.1, 0.9, 0.5), "pixel": (0.0, 1.0, 0.3)},
    "zero range": {"image": (0.5, 0.5, 0.5), "pixel": (0.25, 0.25, 0.25)},
    "no statistics": {"image": (NAN, NAN, NAN), "pixel": (NAN, NAN, NAN)},
    "statistics, no threshold": {"image": (0.1, 0.9, NAN), "pixel": (0.0, 1.0, NAN)},
    "image threshold from the pixel one": {"image": (0.1, 0.9, NAN), "pixel": (0.0, 1.0, 0.3)},
    "no normalisation": {"image": (0.1, 0.9, 0.5), "pixel": (0.0, 1.0, 0.3), "enable_normalization": False},
    "no thresholding": {"image": (0.1, 0.9, 0.5), "pixel": (0.0, 1.0, 0.3), "enable_thresholding": False},
    "sensitivity": {"image": (0.1, 0.9, 0.5), "pixel": (0.0, 1.0, 0.3), "image_sensitivity": 0.8},
}


def _clamping(**kwargs: object) -> RankPreservingPostProcessor:
    return RankPreservingPostProcessor(clamp=True, **kwargs)


@pytest.mark.parametrize("kind", [PostProcessor, RankPreservingPostProcessor, _clamping])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_same_outputs_as_the_post_processor(case: dict, kind: type) -> None:
    post_processor = _post_processor(**case, kind=kind)
    predictions = _predictions()
    expected, fitted = post_processor(predictions), FittedPostProcessor(post_processor)(predictions)
    for field in ("pred_score", "anomaly_map", "pred_label", "pred_mask"):
        want, got = getattr(expected, field), getattr(fitted, field)
        assert (want is None and got is None) or torch.equal(got, want), field


def test_fitted_case_has_no_where() -> None:
    fitted = FittedPostProcessor(_post_processor(**CASES["fitted"]))

    def run(score: torch.Tensor, anomaly_map: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(fitted(InferenceBatch(pred_score=score, anomaly_map=anomaly_map))[:4])

    traced = torch.jit.trace(run, (torch.rand(2), torch.rand(2, 1, 4, 4)))
    assert "aten::where" not in str(traced.graph)
    assert "aten::clamp" in str(traced.graph)


def test_other_post_processors_are_refused_and_kept() -> None:
    class Custom(PostProcessor):
        pass

    custom = Custom()
    with pytest.raises(TypeError, match="Custom"):
        FittedPostProcessor(custom)
    model = Salad(**TINY, post_processor=custom)
    with fitted_post_processing(model):
        assert model.post_processor is custom


def test_context_swaps_and_restores() -> None:
    model = Salad(**TINY)
    original = model.post_processor
    with fitted_post_processing(model):
        assert isinstance(model.post_processor, FittedPostProcessor)
    assert model.post_processor is original
    with pytest.raises(RuntimeError), fitted_post_processing(model):
        raise RuntimeError
    assert model.post_processor is original


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_clamp_is_anomalibs_normalisation_and_travels_in_the_checkpoint_config(case: dict) -> None:
    # Checkpoints written before the squash became Salad's default keep scoring with anomalib's clamp.
    clamping, anomalib = _post_processor(**case, kind=_clamping), _post_processor(**case)
    for field in ("pred_score", "anomaly_map", "pred_label", "pred_mask"):
        want, got = getattr(anomalib(_predictions()), field), getattr(clamping(_predictions()), field)
        assert (want is None and got is None) or torch.equal(got, want), field
    restored = RankPreservingPostProcessor()
    restored.load_checkpoint_config(clamping.checkpoint_config())
    assert restored.clamp
    restored.load_checkpoint_config(anomalib.checkpoint_config())  # no "clamp" key: left as it is
    assert restored.clamp
