@echo off
rem Tandem for Windows: double-click. Finds Python 3.9+ and runs launcher.py.
cd /d "%~dp0.."
where py >nul 2>nul && (py -3 launcher.py %* & goto :done)
where python >nul 2>nul && (python launcher.py %* & goto :done)
echo Tandem needs Python 3.9 or newer: install it from https://www.python.org/downloads/ (tick "Add python.exe to PATH") and double-click Tandem again.
pause
exit /b 1
:done
if errorlevel 1 pause
