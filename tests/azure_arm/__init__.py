"""A local Azure Resource Manager emulator for the NetApp endpoints lanex calls (HTTPS on 127.0.0.1)."""
