"""Project tools run by the Makefile (`make package-check`: package_check.py); not part of the wsgate package."""
