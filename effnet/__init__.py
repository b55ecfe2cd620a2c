"""effnet: everything the programs at the top import, grouped by concern.

The programs (train.py, predict.py, evaluate.py, export.py, app.py, hubconf.py) and the tutorial's modules
(model.py: the network; my_dataset.py and utils.py: the tutorial's names) stay at the top. This package holds
the rest; its only import from the top is `model`, the network.

    effnet/
      variants.py         the B0-B7 table: widths, depths, image sizes, dropout
      pretrained.py       torchvision's ImageNet weights: download, verify, map onto model.py's keys
      model_choices.py    the names a model is picked by: runs/, best.pth, 'imagenet', backends, precisions
      command_line.py     one-line usage errors, flag parsers shared by the programs
      hardware.py         devices, usable CPUs, data-loader workers, the memory allocator setting
      atomic_files.py     checkpoints and outputs written atomically; a full disk is one clear error
      download.py         downloads checked against their sha256
      output_paths.py     the rule every output flag follows: never replace an input or a foreign file
      harness.py          what tests and benchmarks both set up: app.py in its own process, camera-sized photos
      data/               photos and folders
        images.py           decoding any photo to upright RGB, safely; preprocessing settings
        class_folders.py    scanning class-per-folder trees (and train/ val/ test/ splits)
        dataset.py          MyDataSet, the transforms, the epoch sampler
        flower_photos.py    the flower photos: download and the bundled sample
        duplicates.py       the data check: exact and near copies, across classes and splits
      training/           train.py's run
        flags.py            train.py's flags, read and checked without PyTorch
        trainer.py          the run: data, model, epochs, resume, the end of a run
        loop.py             the split, train_one_epoch, evaluate (the tutorial's utils.py names)
        recipe.py           recipe options: optimizers, warm-up, EMA, mixing, augmentation, early stopping
        run_folder.py       what a run folder holds, and finding the newest run
        distributed.py      torchrun: processes, reductions, agreement
      inference/          running a trained model
        classifier.py       Classifier and classify(): one interface over every backend
        torch_backend.py    PyTorch checkpoints (and Grad-CAM)
        exported_backends.py  ONNX Runtime and OpenVINO on an exported .onnx
        onnx_conversion.py  writing and checking the .onnx export
        int8.py             the INT8 export, calibrated and scored against float32
        session_cache.py    ONNX Runtime sessions from a cached optimised copy of the model
        class_names.py      which class names go with a checkpoint
        batch_worker.py     the web service's request batching
        web_service.py      app.py's FastAPI service
      reports/            scores and what a person reads
        scoring.py          scoring a folder of photos: predictions, per-class tables
        metrics.py          precision, recall, F1 from a confusion matrix
        chance.py           whether a model learned anything: chance level, one answer for everything
        figures.py          curves, confusion matrices, prediction figures
        report_page.py      report.html
        label_issues.py     the labels a trained model doubts most
"""
