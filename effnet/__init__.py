"""effnet: what the programs and the tutorial's modules at the top import, one module per job.

The programs (train.py, predict.py, evaluate.py, export.py, app.py, hubconf.py) and the tutorial's modules
(model.py: the network; utils.py: the split and the loops over batches; my_dataset.py: the dataset and its
transforms) stay at the top, where the tutorial's users look. They import this package; it imports nothing from
the top but `model`, the network, and training imports nothing from inference.

    effnet/
      variants.py         the B0-B7 table: widths, depths, image sizes, dropout; 'imagenet' weights by name
      checkpoints.py      reading .pth files safely; this project's checkpoint fields, checked
      weights.py          weights into a model: ImageNet's download, the tutorial's and torchvision's layouts
      run_files.py        where runs are and what their files are called: best.pth, best.onnx, the newest run
      command_line.py     one-line usage errors, --help at one width, Ctrl-C held while a step completes
      model_flags.py      the flags predict.py, evaluate.py and app.py share to choose a model
      hardware.py         devices, usable CPUs, data-loader workers, the memory allocator setting
      atomic_files.py     checkpoints and outputs written atomically; a full disk is one clear error
      download.py         downloads checked against their sha256
      output_paths.py     the rule every output flag follows: never replace an input or a foreign file
      data/               photos and folders
        images.py           decoding any photo to upright RGB, safely; the evaluation preprocessing in numpy
        class_folders.py    scanning class-per-folder trees (and train/ val/ test/ layouts)
        split.py            the train/validation (and test) split, and its split.json
        sampling.py         EpochSampler: each epoch's order and each sample's seed
        flower_photos.py    the flower photos: download and the bundled sample
        duplicates.py       the data check: exact and near copies, across classes and splits
      training/           what train.py calls
        settings.py         TrainSettings: a run's settings, built from the flags or a checkpoint, then frozen
        flags.py            train.py's flags and --help, read without PyTorch
        steps.py            how a batch is computed (channels_last, AMP) and what an epoch returns
        recipe.py           starting weights, frozen layers, optimizer, schedule, loss, mixing, EMA, early stopping
        progress.py         the history of epochs, the best one, what a checkpoint holds
        run_folder.py       where a run folder goes and what is written into it as the run goes
        resume.py           continuing a run that stopped
        data_check.py       the checks of a run's photos: class count, copies, --check-data
        stopping.py         how a run stops in one line: bad input, Ctrl-C, a diverging loss, a full disk
        distributed.py      torchrun: processes, reductions, the model placed on its device
      inference/          running a trained model
        classifier.py       Classifier and classify(): one interface over every backend
        runtimes.py         the backends and precisions, and whether a runtime is installed
        torch_backend.py    PyTorch checkpoints (and Grad-CAM)
        export_format.py    what an exported .onnx says about itself, written and read back
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
        figures.py          curves, confusion matrices, class counts, batches, prediction figures
        report_page.py      report.html
        label_issues.py     the labels a trained model doubts most
        run_review.py       after a run's last epoch: best.onnx, the review of best.pth, report.html
"""

__version__ = "0.4.0"  # pyproject.toml reads it; the fourth round of the project
