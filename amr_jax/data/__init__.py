"""Data layer: typed annotation records, loaders, feature stores, planted features and validation.

Everything here is numpy/Python; the tf.data pipeline that batches it lives in `data_pipelines/`.
"""
