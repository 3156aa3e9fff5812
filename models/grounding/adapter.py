"""The registry's classifier as the ``classify`` callable a :class:`CamPriorGrounder` takes.

``classify(image) -> (probability per finding, heatmap per finding on the image grid)``: the
model's preprocessing, one inference, and each label's map put back on the image with
:func:`models.cam.cam_to_image` (classifier-cam/1 CAMs and the demo's in-graph Grad-CAM alike).
The API and the worker get a grounder in one line: ``grounder_for(registry.resolve(...))``.
"""

import numpy as np
import numpy.typing as npt

from models.cam import cam_to_image
from models.grounding.grounder import CamPriorGrounder, Classify, ClassifyResult
from models.preprocess import prepare_image
from models.registry import ModelEntry
from models.runtime import load_model


def classifier_callable(entry: ModelEntry) -> Classify:
    """``classify`` for an installed model (its card gives labels and preprocessing)."""
    card = entry.card
    model = load_model(entry)

    def classify(image: npt.NDArray[np.floating]) -> ClassifyResult:
        prepared = prepare_image(np.asarray(image, dtype=np.float32), card.preprocessing)
        output = model.infer(prepared.tensor[np.newaxis])
        shape = (int(image.shape[0]), int(image.shape[1]))
        probabilities = {
            name: float(output.probabilities[0, k]) for k, name in enumerate(card.label_names)
        }
        cams = {
            name: cam_to_image(output.heatmaps[0, k], prepared.geometry, shape)
            for k, name in enumerate(card.label_names)
        }
        return probabilities, cams

    return classify


def grounder_for(entry: ModelEntry) -> CamPriorGrounder:
    """The default grounder over an installed model."""
    return CamPriorGrounder(classifier_callable(entry), model=f"{entry.name} {entry.version}")
