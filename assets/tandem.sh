#!/bin/sh
# Tandem for Linux: find Python 3.9+ and hand over to launcher.py (which does everything else).
cd "$(dirname "$0")/.." || exit 1
for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
        exec "$candidate" launcher.py "$@"
    fi
done
echo "Tandem needs Python 3.9 or newer. Install it (Debian/Ubuntu: sudo apt install python3 python3-venv) and try again."
printf "Press Enter to close this window. "
read -r _
exit 1
