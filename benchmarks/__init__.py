"""Maintainers' measurements, run from the repository root as `python -m benchmarks.<name>` (see docs/benchmarks.md):
speed (training and inference against torchvision and the tutorial), http_api (app.py under load), deployment
(ONNX Runtime / OpenVINO against PyTorch), training_recipes (recipe options on real photos), time_to_accuracy
(--recipe fast against modern and tutorial), duplicate_detection, data_check_cost and label_issue_recall
(the data check), help_startup (--help against import torch), int8_speed and one_photo (INT8 and one photo against plain
ONNX Runtime), gpu_check.sh."""
