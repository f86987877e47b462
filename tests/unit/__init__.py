"""Unit tests of the hub core: no server, no TCP; socketpairs and fake transports."""
