"""What several commands share."""

DATA_HELP = ("CIFAR-10 location: a cifar-10-batches-py folder, cifar-10-python.tar.gz, an image-folder tree or a "
             ".tar(.gz) of one. Default: $EDGECLS_DATA, else ./data.")
