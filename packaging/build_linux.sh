#!/usr/bin/env bash
# Build the Linux bundle: a one-folder PyInstaller app, a .desktop entry and icon, in a .tar.gz.
#   packaging/build_linux.sh [PYTHON]      (make package runs it with the project's venv)
# Output: dist/chatfactory/ (run dist/chatfactory/chatfactory) and dist/chatfactory-linux-x86_64.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
test -f assets/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf || "$PY" -m engine.models.bundled
rm -rf build/pyinstaller dist/chatfactory
"$PY" -m PyInstaller --noconfirm --log-level WARN --workpath build/pyinstaller --distpath dist packaging/chatfactory.spec
cp packaging/chatfactory.desktop assets/icons/chatfactory.png dist/chatfactory/
cat > dist/chatfactory/install.sh <<'SH'
#!/bin/sh
# Adds chatfactory to your desktop's application menu (per user, no root needed).
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$HOME/.local/share/applications" "$HOME/.local/share/icons/hicolor/256x256/apps"
cp "$here/chatfactory.png" "$HOME/.local/share/icons/hicolor/256x256/apps/chatfactory.png"
sed "s|^Exec=.*|Exec=\"$here/chatfactory\" %U|" "$here/chatfactory.desktop" > "$HOME/.local/share/applications/chatfactory.desktop"
echo "chatfactory is in your applications menu."
SH
chmod +x dist/chatfactory/install.sh
tar -C dist -czf dist/chatfactory-linux-x86_64.tar.gz chatfactory
du -sh dist/chatfactory dist/chatfactory-linux-x86_64.tar.gz
