"""AMR (ICCV 2025) on its TR-DETR base: model, losses, matcher, Splice/Boost, curriculum, task, checker."""
