import numpy as np
import pytest

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.rng import initial_latents, reference_normals

# Literal vectors for the Swift/Kotlin ports: first draws (float32) of initial_latents(seed, ...).
VECTORS = {
    0: [1.764052391052246, 0.40015721321105957, 0.978738009929657, 2.2408931255340576, 1.8675580024719238,
        -0.9772778749465942],
    42: [0.49671414494514465, -0.13826429843902588, 0.6476885676383972, 1.5230298042297363, -0.2341533750295639,
         -0.23413695394992828],
    4294967295: [0.6484086513519287, 0.6693235039710999, -1.0805437564849854, 0.2845010459423065,
                 0.1138877347111702, 0.867621898651123],
}


@pytest.mark.parametrize("seed", sorted(VECTORS))
def test_literal_vectors(seed):
    got = initial_latents(seed, (1, 4, 8, 8)).reshape(-1)[:6]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(VECTORS[seed], dtype=np.float32))


@pytest.mark.parametrize("seed", [0, 1, 123456789])
def test_reference_transcription_matches_numpy(seed):
    # The plain-Python MT19937 + polar transcription (what the apps port) equals NumPy's stream, odd counts too.
    np.testing.assert_array_equal(reference_normals(seed, 1001), np.random.RandomState(seed).standard_normal(1001))


def test_c_order_and_shape():
    flat = initial_latents(7, (8,))
    np.testing.assert_array_equal(initial_latents(7, (2, 4)).reshape(-1), flat)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "3", True])
def test_bad_seed(bad):
    with pytest.raises(PocketdiffError, match="seed"):
        initial_latents(bad, (4,))
