"""The data: IDX files and the dataset registry, the device-resident loader, augmentation, MNIST-C corruptions."""
