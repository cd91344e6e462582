"""The node image: the bootable base ISO, per-token seed images, USB flashing and the
install-to-disk layout. The names every part agrees on are in :mod:`node_image.image.layout`."""
