"""`features.extract`: one traced inference function per model, whatever the split and the batch size."""

import numpy as np

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.model import network
from fashionsearchnet_v2.trained import features


def test_one_trace_per_model_for_every_split_and_last_batch(info):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir="unused"))
    model = network.build_network(info.num_values, info.attribute_names, cfg.model, "full")
    # 12 query images in batches of 8 and 4, then 36 gallery images in 8, 8, 8, 8, 4: three batch sizes
    # and two splits, one trace (decision P9's third part; traced for the first batch's size, the
    # function was traced again at the first smaller batch).
    query = features.extract(model, info, "query", cfg.model.image_size, batch_size=8, progress=False)
    gallery = features.extract(model, info, "gallery", cfg.model.image_size, batch_size=8, progress=False)
    assert features._INFERENCE[model].experimental_get_tracing_count() == 1
    assert (
        query["fc10"].shape[0] == info.splits["query"] and gallery["fc10"].shape[0] == info.splits["gallery"]
    )
    assert np.all(np.isfinite(gallery["fc10"]))
