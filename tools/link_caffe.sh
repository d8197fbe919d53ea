#!/usr/bin/env bash
# Make the cached Caffe build visible in the project's venv:
# a .pth file for pycaffe, and a `caffe` CLI wrapper in the venv's bin/
# whose embedded Python finds numpy, caffe and caffe_admm (for Python layers).
#
#   tools/link_caffe.sh PREFIX VENV
set -euo pipefail
PREFIX=$(cd "${1:?usage: link_caffe.sh PREFIX VENV}" && pwd)
VENV=$(cd "${2:?usage: link_caffe.sh PREFIX VENV}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYCAFFE="$PREFIX/lib/python3/dist-packages"
echo "$PYCAFFE" > "$SITE/caffe.pth"
cat > "$VENV/bin/caffe" <<WRAP
#!/bin/sh
# Caffe's command-line tool, built by tools/install_caffe.sh, with the project's
# Python (numpy, pycaffe, caffe_admm) on the path of its embedded interpreter.
export PYTHONPATH="$ROOT:$PYCAFFE:$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
export GLOG_minloglevel="\${GLOG_minloglevel:-2}"
exec "$PREFIX/bin/caffe" "\$@"
WRAP
chmod +x "$VENV/bin/caffe"
