"""Synthetic datasets in the on-disk formats of the real ones, for tests, benchmarks and demos.

The top layer of the package: it may import :mod:`dmlkit.data` (to write what the loaders
read), and nothing in the library imports it.

    write_cifar100        ``cifar-100-python/{train,test,meta}`` as Python 2 pickles
    write_market_fixture  a Market-1501 folder of synthetic identities (a :class:`MarketFixture`)
    dump_py2_pickle       write any object as Python 2's ``cPickle.dump(obj, f, 2)`` would
    write_image_folder    ``ROOT/{train,test}/<class>/*.png`` of synthetic images (imagefolder)
"""

from dmlkit.testing.cifar100 import dump_py2_pickle, write_cifar100
from dmlkit.testing.imagefolder import write_image_folder
from dmlkit.testing.market1501 import MarketFixture, write_market_fixture

__all__ = [
    "MarketFixture",
    "dump_py2_pickle",
    "write_cifar100",
    "write_image_folder",
    "write_market_fixture",
]
