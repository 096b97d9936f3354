from shardguard.launch import main

main()
