from asyncinvoke.cli import main

main()
