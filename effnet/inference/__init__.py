"""Running a trained model: the Classifier, its PyTorch / ONNX Runtime / OpenVINO backends, the export, the web
service (map: effnet/__init__.py)."""
