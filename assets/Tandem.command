#!/bin/sh
# Tandem for macOS: double-click in Finder. Finds Python 3.9+ and runs launcher.py.
cd "$(dirname "$0")/.." || exit 1
for candidate in python3 /opt/homebrew/bin/python3 /usr/local/bin/python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
        exec "$candidate" launcher.py "$@"
    fi
done
echo "Tandem needs Python 3.9 or newer: install it from https://www.python.org/downloads/ (or run xcode-select --install) and double-click Tandem again."
printf "Press Enter to close this window. "
read -r _
exit 1
