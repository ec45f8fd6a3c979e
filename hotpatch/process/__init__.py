"""The live process: attach to it, stop and resume its threads, read and write its memory,
make system calls in it, and know what it has loaded. Entered through attach()."""
