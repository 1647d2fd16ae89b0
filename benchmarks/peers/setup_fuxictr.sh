#!/usr/bin/env bash
# Set up a separate virtual environment for the FuxiCTR peer comparison.
#
#   benchmarks/peers/setup_fuxictr.sh PATH_TO_FUXICTR_CHECKOUT [VENV]
#
# PATH_TO_FUXICTR_CHECKOUT is a source tree of the reczoo/FuxiCTR repository at a release tag
# (cloned there at $FUXICTR_TAG, default v2.3.9, when the path does not exist)
# (e.g. v2.3.9: `git clone --branch v2.3.9 <FuxiCTR repo>`, or `git archive v2.3.9 | tar -x -C DIR`
# in an existing clone). Its fuxictr/version.py decides which `fuxictr`
# release is installed from PyPI; the PyPI wheel lacks model_zoo/ (DNN, DeepFM, ...), so
# run_fuxictr.py loads the model classes from the checkout's model_zoo/.
# VENV defaults to .peers/fuxictr-venv. Nothing is installed into ctrlab's own venv.
#
# Use tag v2.3.9: it is the last release with a tag in the repository (PyPI's 2.3.10 matches no
# tagged commit and pulls in ray[data]); its PyPI wheel is byte-identical to the tag's fuxictr/.
# Dependency pins: FuxiCTR v2.3.9 uses np.Inf (removed in NumPy 2),
# log_loss(eps=...) (removed in scikit-learn 1.5), keras_preprocessing, and declares
# polars<=1.0.0 in its requirements.txt; the pins below are versions of that era that satisfy
# all of these. torch==2.13.0 is pinned because a local CPU wheel of exactly that version is
# available to pip here (any other spec would download a multi-GB CUDA build).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
FUXICTR_TAG=${FUXICTR_TAG:-v2.3.9}
if [[ ! -e "$1" ]]; then  # no checkout yet: clone the tag (needs network; nothing of it is committed here)
    echo "cloning reczoo/FuxiCTR $FUXICTR_TAG into $1"
    git clone --quiet --depth 1 --branch "$FUXICTR_TAG" https://github.com/reczoo/FuxiCTR.git "$1" || {
        echo "error: could not clone FuxiCTR $FUXICTR_TAG into $1 (offline?); clone it by hand and rerun" >&2
        exit 1
    }
fi
CHECKOUT=$(cd "$1" && pwd)
VENV=${2:-$(cd "$(dirname "$0")/../.." && pwd)/.peers/fuxictr-venv}
PYTHON=${PYTHON:-python3}

VERSION_FILE="$CHECKOUT/fuxictr/version.py"
if [[ ! -f "$VERSION_FILE" || ! -d "$CHECKOUT/model_zoo" ]]; then
    echo "error: $CHECKOUT is not a FuxiCTR checkout (needs fuxictr/version.py, model_zoo/)" >&2
    exit 1
fi
FUXICTR_VERSION=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$VERSION_FILE")
echo "FuxiCTR checkout: $CHECKOUT (version $FUXICTR_VERSION)"
echo "venv:             $VENV"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install --no-deps "fuxictr==$FUXICTR_VERSION"
# Runtime dependencies of fuxictr (setup.py install_requires), pinned for v2.3.x.
"${PIP[@]}" install \
    "numpy==1.26.4" \
    "pandas==2.2.3" \
    "scikit-learn==1.4.2" \
    "scipy==1.13.1" \
    "polars==0.20.31" \
    "pyarrow==20.0.0" \
    "h5py==3.13.0" \
    "PyYAML==6.0.2" \
    "tqdm==4.67.1" \
    "Keras-Preprocessing==1.1.2"

# DeepCTR-Torch for the performance harness (benchmarks/peers/bench_peers.py, issue 5), in the same
# peers venv: 0.3.0 is its latest release; it imports `requests` without declaring it (and queries
# PyPI for updates on import: the harness's workers block that).
"${PIP[@]}" install "deepctr-torch==0.3.0" "requests==2.32.3"

# The installed package must be the code of the checkout (same tag), otherwise the
# model_zoo classes could be run against a different library version.
"$VENV/bin/python" - "$CHECKOUT" <<'EOF'
import filecmp, os, sys
import fuxictr
ckpt = os.path.join(sys.argv[1], "fuxictr")
inst = os.path.dirname(fuxictr.__file__)
diff = []
for root, _, files in os.walk(ckpt):
    for f in files:
        if f.endswith(".py"):
            a = os.path.join(root, f)
            b = os.path.join(inst, os.path.relpath(a, ckpt))
            if not os.path.exists(b) or not filecmp.cmp(a, b, shallow=False):
                diff.append(os.path.relpath(a, ckpt))
import torch, numpy, polars, sklearn
print(f"fuxictr {fuxictr.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"polars {polars.__version__}, scikit-learn {sklearn.__version__}")
if diff:
    print("WARNING: installed fuxictr differs from the checkout in: " + ", ".join(sorted(diff)))
    sys.exit(1)
print("installed fuxictr matches the checkout's fuxictr/ sources")
EOF
