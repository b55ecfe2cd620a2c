"""Train EfficientNet on a folder of photos, one sub-folder per class, as the tutorial's train.py does.

main() reads top to bottom in the tutorial's order: the flags, the split of the photos, the two MyDataSets with
their transforms (my_dataset.py: change the augmentation there), the DataLoaders, the model from model.py with its
starting weights, the optimizer and the schedule, then the epochs, each one train_one_epoch and evaluate
(utils.py: the loops over batches) and a checkpoint. What the tutorial leaves out is one call each, named for what
it does: resuming, the run folder, the check for copies among the photos, torchrun, the recipe's options, early
stopping, and the report and export at the end (effnet/training/ and effnet/reports/run_review.py).

    python train.py --num_classes 5             # the flower photos; `python train.py --help` for every flag
"""
from effnet.command_line import UsageError, exit_with, interrupts_deferred, report


def main(argv: list[str] | None = None) -> int:
    """train.py's run; the exit status, every failure in one line (0 done, 1 failed, 2 bad input, 130 Ctrl-C)."""
    try:  # a Ctrl-C while modules import takes effect once they are whole: a half-imported numpy or torch breaks
        with interrupts_deferred():
            from effnet.training.flags import build_parser, given_flags
            from effnet.training.settings import TrainSettings, describe_sizes, settings_from_flags
        flags = build_parser().parse_args(argv)  # --help and a wrong flag answer here, before PyTorch is imported
        given = given_flags(argv)
        new_run = None if flags.resume else settings_from_flags(flags, given)  # checked once, then frozen
        with interrupts_deferred():
            import torch
            from torch.utils.data import DataLoader

            from effnet.data.sampling import EpochSampler, LastBatchMerged
            from effnet.hardware import default_workers, keep_freed_memory_for_reuse
            from effnet.reports.run_review import finish_run
            from effnet.training import distributed, recipe, resume, run_folder, stopping
            from effnet.training.data_check import check_data, check_split, download_if_missing
            from effnet.training.progress import Progress, epoch_line
            from effnet.training.steps import StepSettings
            from model import create_model
            from my_dataset import MyDataSet, crop_decode_size, eval_transform, train_transform
            from utils import evaluate_epoch, read_data, train_epoch
    except UsageError as error:
        return report(str(error))
    except KeyboardInterrupt:
        return report("interrupted while starting; nothing was trained, so there is nothing to resume", status=130)

    with stopping.stops_in_one_line() as stop:  # bad input, an unwritable file, Ctrl-C: one line, an exit status
        keep_freed_memory_for_reuse()  # faster steps on Linux (hardware.py says why)
        resumed = resume.resume_run(flags, given) if flags.resume else None
        settings: TrainSettings = resumed.settings if resumed else new_run
        run_folder.check_place(settings)  # before any work: where a new run folder (or --check-data's table) goes
        ddp, device = distributed.init_distributed(settings.device, settings.sync_bn)  # torchrun: a GPU each

        # the photos: the tutorial's split of class folders (utils.read_split_data), a dataset's own train/ val/
        # test/ folders, or a resumed run's split.json; then the check for copies among them
        download_if_missing(settings, ddp)  # the flower photos, --data-path's default
        split = resumed.split if resumed else read_data(settings.data_path, settings.val_rate, settings.seed,
                                                        report=ddp.is_main)
        check_split(split, settings)
        data_check = check_data(settings, split, resumed.folder.path if resumed else None, ddp.is_main)
        if settings.check_data is not None:
            return 0  # --check-data: the check was the whole job

        # the two datasets with their transforms (my_dataset.py), and their loaders; EpochSampler seeds each
        # sample's augmentation by the run's seed, the epoch and its index: a resumed run sees the same batches
        images = settings.image_settings()  # the crop sizes and normalisation of the variant, or of --image-size
        sizes = settings.train_sizes(images["train_size"])  # per epoch: --train-crop, --progressive-resizing
        val_dataset = MyDataSet(split.val_paths, split.val_labels,
                                eval_transform(images["eval_resize"], images["eval_crop"], images["interpolation"]),
                                decode_size=images["eval_resize"])
        train_sampler = EpochSampler(len(split.train_paths), shuffle=True, seed=settings.seed, rank=ddp.rank,
                                     num_replicas=ddp.world_size,
                                     weights=recipe.sample_weights(split.train_labels, len(split.classes), settings))
        train_batches = LastBatchMerged(train_sampler, settings.batch_size)
        workers = default_workers(settings.batch_size, device) if settings.workers is None else settings.workers
        # each loader draws from a generator of its own, not from the global one that dropout uses
        loading = dict(num_workers=workers, collate_fn=MyDataSet.collate_fn, pin_memory=device.type == "cuda",
                       persistent_workers=workers > 0, generator=torch.Generator())
        val_loader = DataLoader(val_dataset, batch_size=settings.batch_size, **loading,
                                sampler=EpochSampler(len(val_dataset), shuffle=False, rank=ddp.rank,
                                                     num_replicas=ddp.world_size, pad=False))

        def train_loader_at(size: int) -> DataLoader:  # the training photos, cropped to `size` pixels
            transform = train_transform(size, settings.auto_augment, settings.random_erase)
            dataset = MyDataSet(split.train_paths, split.train_labels, transform, decode_size=crop_decode_size(size))
            return DataLoader(dataset, batch_sampler=train_batches, **loading)

        # the model from model.py, with its starting weights: ImageNet's, a .pth, none, or the resumed run's
        torch.manual_seed(settings.seed)
        raw_model = create_model(settings.model, num_classes=len(split.classes), drop_connect_rate=settings.drop_path)
        recipe.load_starting_weights(raw_model, settings, resumed and resumed.checkpoint, verbose=ddp.is_main)
        if settings.freeze_layers:
            recipe.freeze_all_but_head(raw_model)
        model, eval_model = distributed.place_model(raw_model, device, ddp, settings)  # device, DDP, compile

        # the optimizer and the schedule (SGD and a cosine, as the tutorial's, or AdamW with warm-up), and what the
        # recipe adds to each step: the loss, mixup/CutMix, the weights' moving average (which validation scores)
        optimizer = recipe.build_optimizer(raw_model, settings)
        scheduler = recipe.build_scheduler(optimizer, settings, steps_per_epoch=len(train_batches))
        steps = recipe.TrainingSteps.build(settings, split.train_labels, len(split.classes), raw_model, device,
                                           scheduler)
        step_settings = StepSettings.for_device(device, settings.channels_last, settings.amp)
        eval_model = steps.evaluated(eval_model)

        # the run folder: a new one, or the resumed one with the progress it saved
        if resumed is None:
            folder, progress = run_folder.RunFolder.create(settings, ddp), Progress()
            folder.write_start(split, settings.recipe_record(split.classes, steps.class_weights))
        else:
            folder = resumed.folder
            progress = resume.restore_progress(resumed, optimizer, scheduler, steps, step_settings)
        folder.write_data_check(data_check, split.root)
        ddp.print(f"{split.describe()} in {len(split.classes)} classes; efficientnet_{settings.model} at "
                  f"{describe_sizes(sizes, images['eval_crop'])} on {device}{ddp.processes}; run folder {folder.path}")

        # the epochs: train, validate, keep the best (best.pth) and the last (last.pth)
        show = settings.progress and ddp.is_main
        with stopping.epochs_stop_cleanly(folder, ddp, progress) as stopped:  # Ctrl-C, a diverging loss, ...
            for epoch in range(progress.next_epoch, settings.epochs):
                if recipe.early_stop(settings, progress.best_epoch, epoch, ddp.print):
                    break
                if epoch == progress.next_epoch or sizes[epoch] != sizes[epoch - 1]:  # the first, or a new size
                    train_loader = train_loader_at(sizes[epoch])
                train_sampler.set_epoch(epoch)
                torch.manual_seed(settings.seed * 1_000_003 + epoch)  # dropout, stochastic depth, mixup: resumable
                lr = optimizer.param_groups[0]["lr"]
                trained = train_epoch(model, optimizer, train_loader, step_settings, epoch + 1, recipe=steps,
                                      progress=show, smallest_batch=min(2, settings.batch_size))
                distributed.broadcast_buffers(eval_model)  # every process evaluates what rank 0 saves
                validated = evaluate_epoch(eval_model, val_loader, step_settings, num_classes=len(split.classes),
                                           progress=show)
                stopping.check_images_read(split.root, epoch + 1, trained, validated,
                                           len(train_sampler) * ddp.world_size, len(split.val_paths))
                scheduler.after_epoch()
                improved = progress.record(epoch + 1, lr, sizes[epoch], trained, validated, settings)
                folder.write_epoch(progress.checkpoint(steps.checkpoint_fields(raw_model), optimizer, scheduler,
                                                       step_settings.scaler, settings, split.classes, images,
                                                       validated.confusion), improved, progress.history)
                unread = len(split.train_paths) - trained.images if ddp.world_size == 1 else 0
                ddp.print(epoch_line(epoch + 1, settings.epochs, lr, trained, validated, improved, unread))
        if stopped.status or not ddp.is_main:
            return stopped.status

        # after the last epoch: the best epoch's figures, best.onnx beside best.pth, and report.html
        return finish_run(folder, split, progress, settings, data_check, step_settings, workers)
    return stop.status


if __name__ == "__main__":
    exit_with(main())  # a Ctrl-C while the interpreter tears down is one line and status 130, no traceback
