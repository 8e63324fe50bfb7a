from stn.gpu_check.cli import main

main()
