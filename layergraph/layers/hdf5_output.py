"""HDF5Output: write the bottoms to an HDF5 file (h5py, an optional extra)."""
from ..backend import to_numpy
from ..layer import Layer, register_layer
from .hdf5_data import import_h5py


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    r"""Save bottom[0] as dataset ``data`` and bottom[1] as dataset
    ``label`` of ``hdf5_output_param.file_name`` (Caffe's dataset names).

    The file is created (truncated) at set up.  Every forward appends its
    batch along the first axis, so after k forwards the datasets hold the
    k batches in order (Caffe writes the datasets once and fails on the
    second batch; appending keeps every batch).  The file is written and
    closed in each forward, so it is complete whenever the net stops.
    Values are stored in the net's dtype.  No tops; no gradient (Caffe's
    backward does nothing).  Needs h5py (``pip install h5py``).
    """

    exact_bottoms = 2
    exact_tops = 0
    has_backward = False

    DATASETS = ("data", "label")

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.h5py = import_h5py(self)
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is required")
        try:
            with self.h5py.File(self.file_name, "w"):
                pass
        except OSError as e:
            raise self.error(f"cannot create {self.file_name} "
                             f"({' '.join(str(e).split())})") from None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        for name, b in zip(self.DATASETS, bottom):
            if b.num_axes < 1:
                raise self.shape_error(f"bottom '{name}' needs a first (batch) axis")

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        try:
            with self.h5py.File(self.file_name, "a") as f:
                for name, b in zip(self.DATASETS, bottom):
                    values = to_numpy(b.data)
                    if name not in f:
                        f.create_dataset(name, data=values, maxshape=(None,) + values.shape[1:],
                                         chunks=True)
                        continue
                    ds = f[name]
                    if ds.shape[1:] != values.shape[1:]:
                        raise self.shape_error(f"bottom '{name}' rows are {values.shape[1:]}; "
                                               f"earlier batches in {self.file_name} had "
                                               f"{ds.shape[1:]}")
                    start = ds.shape[0]
                    ds.resize(start + values.shape[0], axis=0)
                    ds[start:] = values
        except OSError as e:
            raise self.error(f"cannot write {self.file_name} "
                             f"({' '.join(str(e).split())})") from None
