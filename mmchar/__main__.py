from mmchar.cli import main

main()
