"""Azure NetApp Files: finding a claim's ANF volume and moving it between capacity pools.

Used by the controller's storage-tier steps; talks to Azure Resource Manager through the Azure SDK.
"""
